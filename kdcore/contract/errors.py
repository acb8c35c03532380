"""How a contract violation reaches the user: one error type, one way to word pydantic's errors.

Every boundary that parses a spec or a config (the CLI's files, the API's request body, the
sandbox's request) words a :class:`pydantic.ValidationError` with :func:`explain_errors` and
:func:`summarize`, so a bad field reads the same everywhere: its dotted path, then what to
change.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kdcore.contract.bounds import load_json


class SpecError(ValueError):
    """A spec or config that does not parse, or cannot take the data; the message says why.

    ``loc`` is the dotted path of the offending field when one is known (``("config",
    "hint", "student_layer")``), so a service can point at it.
    """

    def __init__(self, message: str, *, loc: Sequence[str | int] = ()) -> None:
        super().__init__(message)
        self.loc = tuple(loc)


Problem = dict[str, Any]  # {"loc": [...], "msg": "...", "type": "..."}


def explain_errors(
    errors: Iterable[Mapping[str, Any]], *, prefix: Sequence[str | int] = ()
) -> list[Problem]:
    """pydantic's (or FastAPI's) error dicts as ``{"loc", "msg", "type"}``, worded for users."""
    out = []
    for err in errors:
        msg = str(err.get("msg", ""))
        kind = err.get("type")
        ctx = err.get("ctx") or {}
        if kind == "union_tag_invalid":
            msg = (
                f"unknown {ctx.get('discriminator', 'tag')} {ctx.get('tag')!r}; "
                f"valid: {ctx.get('expected_tags')}"
            )
        elif kind == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        elif kind == "value_error":  # our validators' own words, without pydantic's label
            msg = msg.removeprefix("Value error, ")
        loc = [*prefix, *err.get("loc", ())]
        if kind == "json_invalid":  # FastAPI's: loc ends in the character where JSON broke
            pos = loc.pop() if loc and isinstance(loc[-1], int) else 0
            at = f" at character {pos}" if pos else ""
            msg = f"the body is not valid JSON{at}: {ctx.get('error', msg)}"
        out.append({"loc": loc, "msg": msg, "type": kind})
    return out


def summarize(found: Sequence[Problem]) -> str:
    """One line: ``a.b: what to change; c: ...`` (no path for an error about the whole value)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"] for e in found
    )


M = TypeVar("M", bound=BaseModel)


def parse_json_model(model: type[M], data: str | bytes | Mapping[str, Any], *, what: str) -> M:
    """Validate ``data`` (JSON text or a mapping) as ``model``.

    Raises:
        SpecError: ``invalid <what>: <field>: <what to change>; ...``.
    """
    try:
        obj = load_json(data) if isinstance(data, str | bytes) else data
    except json.JSONDecodeError as exc:
        raise SpecError(f"{what} is not valid JSON: {exc}") from exc
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise SpecError(f"invalid {what}: {summarize(explain_errors(exc.errors()))}") from exc
