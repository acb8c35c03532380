"""A sweep's points: the grid's cartesian product over a base config, each point's config
validated by kdcore's own ``DistillConfig``, and a bad value named by its path in the grid.

Order: the grid's fields in :data:`GRID_FIELDS` order, the last one varying fastest (nested
loops, ``itertools.product``), each field's values in the order given; then the scratch
points, one per seed. A point's config is the base config as JSON with the point's values
set, validated again: the grid knows nothing else of the config's fields.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from api.kit.errors import Invalid
from kdcore.contract import DistillConfig, explain_errors, summarize

from .schemas import SweepGrid

# In point order: the last varies fastest.
GRID_FIELDS = ("temperature", "alpha", "lr", "hint", "hint_epochs", "seed")
KD_ONLY = ("temperature", "alpha")  # nothing a scratch run reads

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Point:
    """One job of a sweep: what it sets on the base config, and the config."""

    overrides: dict[str, Any]  # grid field → value as JSON; scratch: method and seed
    at: dict[str, int]  # grid field → the index of this point's value in it
    config: DistillConfig

    @property
    def scratch(self) -> bool:
        return self.overrides.get("method") == "scratch"


def count(grid: SweepGrid, base: DistillConfig, *, scratch: bool) -> int:
    """How many points the grid makes, without making them."""
    sizes = [len(v) for v in _values(grid).values()]
    return math.prod(sizes) + (len(_seeds(grid, base)) if scratch else 0)


def expand(grid: SweepGrid, base: DistillConfig, *, scratch: bool) -> list[Point]:
    """Every point of the grid, in order.

    Raises:
        Invalid: a value no config takes (``grid.alpha.1``), a field the base method has no
            use for (``grid.hint`` with method kd), a combination of values that fails (named
            ``grid`` with the point), or a scratch point that fails (``scratch``).
    """
    values = _values(grid)
    base_json = base.model_dump(mode="json")
    _check_fields(values, base, base_json, scratch=scratch)
    _check_each_value(values, base_json)
    points = []
    fields = list(values)
    for combo in itertools.product(*(range(len(values[f])) for f in fields)):
        at = dict(zip(fields, combo, strict=True))
        overrides = {f: values[f][i] for f, i in at.items()}
        try:
            config = _config(base_json, overrides)
        except ValidationError as exc:
            raise _invalid(
                [{"loc": ["grid"], "msg": f"the point {overrides}: {_explain(exc)}"}]
            ) from exc
        points.append(Point(overrides=overrides, at=at, config=config))
    if scratch:
        for i, seed in enumerate(_seeds(grid, base)):
            overrides = {"method": "scratch", "seed": seed}
            try:
                config = DistillConfig.model_validate({**base_json, **overrides, "hint": None})
            except ValidationError as exc:
                raise _invalid(
                    [{"loc": ["scratch"], "msg": f"the scratch point {overrides}: {_explain(exc)}"}]
                ) from exc
            points.append(
                Point(overrides=overrides, at={"seed": i} if grid.seed else {}, config=config)
            )
    return points


def _values(grid: SweepGrid) -> dict[str, list[Any]]:
    """The grid's fields that are given, in point order, as JSON values (a hint as given)."""
    out: dict[str, list[Any]] = {}
    for field in GRID_FIELDS:
        given = getattr(grid, field)
        if given is not None:
            out[field] = [
                v.model_dump(mode="json", exclude_unset=True) if field == "hint" else v
                for v in given
            ]
    return out


def _seeds(grid: SweepGrid, base: DistillConfig) -> list[int]:
    return list(grid.seed) if grid.seed is not None else [base.seed]


def _config(base_json: Mapping[str, Any], overrides: Mapping[str, Any]) -> DistillConfig:
    """The base config with a point's values set. A grid hint keeps the base hint's fields it
    leaves out; ``hint_epochs`` sets the (point's) hint's ``epochs``."""
    out = dict(base_json)
    for field, value in overrides.items():
        if field == "hint":
            before = base_json.get("hint")
            out["hint"] = {**before, **value} if isinstance(before, dict) else value
        elif field != "hint_epochs":
            out[field] = value
    if "hint_epochs" in overrides and isinstance(out.get("hint"), dict):
        out["hint"] = {**out["hint"], "epochs": overrides["hint_epochs"]}
    return DistillConfig.model_validate(out)


def _check_fields(
    values: Mapping[str, list[Any]],
    base: DistillConfig,
    base_json: Mapping[str, Any],
    *,
    scratch: bool,
) -> None:
    """Fields the base has no use for; checked before any value, so the message says why."""
    problems: list[dict[str, Any]] = []
    if not base.uses_teacher:
        for field in KD_ONLY:
            if field in values:
                problems.append(
                    {
                        "loc": ["grid", field],
                        "msg": f'the base method is "scratch", which has no {field}: every '
                        "point would train the same way; leave it out or change the method",
                    }
                )
        if scratch:
            problems.append(
                {
                    "loc": ["scratch"],
                    "msg": 'the base method is "scratch" already: the points train from '
                    "scratch without it",
                }
            )
    if (
        "hint_epochs" in values
        and "hint" not in values
        and not isinstance(base_json.get("hint"), dict)
    ):
        problems.append(
            {
                "loc": ["grid", "hint_epochs"],
                "msg": "sets config.hint.epochs, and the base config has no hint to set it on "
                '(FitNets: method "fitnet" with a hint, or give grid.hint)',
            }
        )
    if problems:
        raise _invalid(problems)


def _check_each_value(values: Mapping[str, list[Any]], base_json: Mapping[str, Any]) -> None:
    """Each value alone on the base config: errors named by the value's path in the grid."""
    problems: list[dict[str, Any]] = []
    for field, given in values.items():
        for i, value in enumerate(given):
            overrides = {field: value}
            if field == "hint_epochs" and "hint" in values:
                overrides["hint"] = values["hint"][0]
            try:
                _config(base_json, overrides)
            except ValidationError as exc:
                for problem in explain_errors(exc.errors(include_url=False)):
                    loc = _grid_loc(field, i, problem["loc"])
                    located = {**problem, "loc": list(loc or ())}
                    if loc is not None and located not in problems:
                        problems.append(located)
    if problems:
        raise _invalid(problems)


def _grid_loc(field: str, index: int, loc: Sequence[str | int]) -> Loc | None:
    """Where in the sweep's body an error at ``loc`` of a point's config comes from, when the
    point sets ``field`` to its value ``index`` (None: another field's, named there)."""
    if field == "hint_epochs":
        return ("grid", field, index) if tuple(loc[:2]) == ("hint", "epochs") else None
    if not loc:  # a rule about the whole config: the field does not go with the base
        return ("grid", field)
    if loc[0] != field:
        return ("base", "config", *loc)
    return ("grid", field, index, *loc[1:])


def _explain(exc: ValidationError) -> str:
    return summarize(explain_errors(exc.errors(include_url=False)))


def _invalid(problems: Iterable[dict[str, Any]]) -> Invalid:
    found = [{"type": "value_error", **p} for p in problems]
    return Invalid(summarize(found), errors=found)
