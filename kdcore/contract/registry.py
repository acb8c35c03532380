"""The family registry: the one place that knows what an architecture family is.

A :class:`Family` holds, for one ``"family"`` name, the pydantic class of its specs, a
torch-free function that works out every layer's dotted path and per-sample output shape
from a spec, and its torch builder. Everything else asks the registry:

- :data:`ArchSpec`, the pydantic type of "a spec of any registered family", validates by
  the spec's ``family`` and publishes a JSON Schema listing every family (the API's request
  body and the sandbox protocol use it, so ``/openapi.json`` documents each family);
- :func:`layer_shapes` / :func:`layer_paths` (job submission checks hint and guided layers
  in a process without torch);
- :func:`kdcore.models.build_model` (resolves the builder, importing torch only then).

Adding a family is one module that defines the spec class, the shape function and the
builder, and calls :func:`register_family` (see ``kdcore/contract/families/`` for the
built-ins, and docs/design.md).
"""

from __future__ import annotations

import difflib
import importlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from kdcore.contract.bounds import MAX_CLASSES, MAX_INPUT_VALUES, load_json
from kdcore.contract.errors import SpecError, explain_errors, summarize

if TYPE_CHECKING:
    from torch import nn

Shape = tuple[int, ...]


class Spec(BaseModel):
    """Base of every family's spec class: frozen, unknown fields refused.

    Subclasses declare ``family: Literal["<name>"]``; input shape and class count are not
    part of a spec (they come from the data).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    family: str


ShapeFn = Callable[[Any, Shape, int], dict[str, Shape]]
BuildFn = Callable[[Any, Shape, int], "nn.Module"]
# (spec, input shape, the layer shapes ShapeFn gave) → (parameters, MACs per sample)
CostFn = Callable[[Any, Shape, Mapping[str, Shape]], tuple[int, int]]


@dataclass(frozen=True)
class Family:
    """One architecture family.

    Attributes:
        name: the spec's ``family`` value.
        spec: its pydantic spec class (a :class:`Spec` with ``family: Literal[name]``).
        shapes: ``shapes(spec, input_shape, num_classes)``: every module's dotted path in
            ``named_modules()`` order (the root excluded) with its per-sample output shape,
            without torch. Raises :class:`SpecError` when the spec cannot take the input.
        build: ``build(spec, input_shape, num_classes) -> nn.Module``, or its import path
            ``"package.module:function"`` so that registering imports no torch.
        cost: ``cost(spec, input_shape, shapes) -> (params, macs)``: the built model's
            trainable parameters and its multiply-accumulates for one sample (convolutions
            and linear layers, as :func:`kdcore.inspection.inspect_model` counts them),
            without torch, from ``shapes`` (what ``shapes`` gave). Optional: without it
            :func:`kdcore.contract.model_cost` knows a model's activations only.
    """

    name: str
    spec: type[Spec]
    shapes: ShapeFn
    build: BuildFn | str
    cost: CostFn | None = None

    def builder(self) -> BuildFn:
        if not isinstance(self.build, str):
            return self.build
        module, _, attr = self.build.partition(":")
        fn: BuildFn = getattr(importlib.import_module(module), attr)
        return fn


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make ``family`` parse, list its layers, check its shapes and build everywhere.

    Registering the same name again replaces the family (a plugin may override a built-in).

    Raises:
        ValueError: the spec class's ``family`` field does not accept ``family.name``.
    """
    try:
        family.spec.model_validate({"family": family.name})
    except ValidationError as exc:
        if any(e["loc"] == ("family",) for e in exc.errors()):
            raise ValueError(
                f"{family.spec.__name__}.family must accept {family.name!r} "
                f"(declare family: Literal[{family.name!r}])"
            ) from exc
    _FAMILIES[family.name] = family
    return family


def registered_families() -> Mapping[str, Family]:
    """The registered families by name (read-only view)."""
    return dict(_FAMILIES)


def get_family(name: str) -> Family:
    """Raises: SpecError: unknown name (the message lists the valid ones)."""
    family = _FAMILIES.get(name) if isinstance(name, str) else None
    if family is None:
        raise SpecError(
            f"unknown family {name!r}; valid families: {', '.join(sorted(_FAMILIES))}",
            loc=("family",),
        )
    return family


def _validate(value: Any) -> Spec:
    """Pick the family by ``value["family"]`` and validate with its class (errors keep paths)."""
    if isinstance(value, Spec) and value.family in _FAMILIES:
        return value
    if not isinstance(value, dict):
        raise ValueError('an architecture spec is a JSON object such as {"family": "mlp", ...}')
    name = value.get("family")
    if not isinstance(name, str) or name not in _FAMILIES:
        raise ValueError(f"unknown family {name!r}; valid families: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name].spec.model_validate(value)


class _ArchSpecSchema:
    """pydantic hooks for :data:`ArchSpec`: validate through the registry, document every family."""

    @classmethod
    def __get_pydantic_core_schema__(
        cls, _source: Any, _handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda spec: spec.model_dump(mode="json"), when_used="always"
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, _schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # Built when the schema is asked for (e.g. the first GET /openapi.json), so every
        # family registered by then is listed.
        union = core_schema.tagged_union_schema(
            {name: f.spec.__pydantic_core_schema__ for name, f in sorted(_FAMILIES.items())},
            discriminator="family",
        )
        schema = handler(union)
        schema["title"] = "Architecture spec"
        schema["description"] = "One of the registered families, chosen by `family`: " + (
            ", ".join(sorted(_FAMILIES))
        )
        return schema


ArchSpec = Annotated[Spec, _ArchSpecSchema]
"""A spec of any registered family, as a pydantic field type (``student: ArchSpec``)."""


def parse_arch(data: str | bytes | Mapping[str, Any] | Spec) -> Spec:
    """Parse and validate an architecture spec from JSON text or a mapping.

    Raises:
        SpecError: every problem found, and the valid choices where a name is wrong.
    """
    if isinstance(data, Spec):
        return data
    try:
        obj = load_json(data) if isinstance(data, str | bytes) else dict(data)
    except json.JSONDecodeError as exc:
        raise SpecError(f"architecture spec is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise SpecError('architecture spec must be a JSON object such as {"family": "mlp", ...}')
    get_family(obj.get("family"))  # type: ignore[arg-type]  # an unknown name lists the valid ones
    try:
        return _validate(obj)
    except ValidationError as exc:
        raise SpecError(
            f"invalid architecture spec: {summarize(explain_errors(exc.errors()))}"
        ) from exc


def arch_json_schema() -> dict[str, Any]:
    """The JSON Schema of architecture specs, every registered family included."""
    from pydantic import TypeAdapter

    return TypeAdapter(ArchSpec).json_schema()


def layer_shapes(spec: Spec, input_shape: Shape, num_classes: int) -> dict[str, Shape]:
    """Every layer's dotted path and per-sample output shape, in ``named_modules()`` order.

    Raises:
        SpecError: the spec cannot take ``input_shape`` or does not end in ``num_classes``
            logits; the message names the layer and what to change.
    """
    if num_classes < 2:
        raise SpecError(f"a classifier needs at least 2 classes, got {num_classes}")
    if num_classes > MAX_CLASSES:
        raise SpecError(f"{num_classes:,} classes is more than the {MAX_CLASSES:,} supported")
    if math.prod(input_shape) > MAX_INPUT_VALUES:
        raise SpecError(
            f"samples of shape {tuple(input_shape)} have more than the {MAX_INPUT_VALUES:,} "
            "values per sample supported"
        )
    return get_family(spec.family).shapes(spec, tuple(input_shape), num_classes)


def layer_paths(spec: Spec, input_shape: Shape, num_classes: int) -> list[str]:
    """Every module's dotted path, in ``named_modules()`` order (the root excluded)."""
    return list(layer_shapes(spec, input_shape, num_classes))


# The most paths the near-name search compares: difflib costs ~0.1 ms a path, and a model
# may list tens of thousands (a deep resnet lists 8 per block).
NEAR_CANDIDATES = 500


def describe_missing_layer(path: str, valid: Sequence[str]) -> str:
    """A message naming the nearest valid paths to ``path``.

    The search is bounded: in a model with more than :data:`NEAR_CANDIDATES` paths it looks
    under the deepest module of ``path`` that exists (``layer3.150`` for
    ``layer3.150.conv``), or else among one path per naming pattern (``layer1.0.conv1`` for
    every ``layer<i>.<j>.conv1``), at most that many, spread evenly.
    """
    if not valid:
        return (
            f"no layer {path!r}: this model lists no layers (a TorchScript or torch.export "
            "model hides them); use method kd, or a weights file plus an architecture spec"
        )
    near = difflib.get_close_matches(path, _shortlist(path, valid), n=5, cutoff=0.4)
    near = near or list(valid[:5])
    return f"no layer {path!r}; nearest valid paths: {', '.join(near)} ({len(valid)} in all)"


def _shortlist(path: str, valid: Sequence[str]) -> Sequence[str]:
    if len(valid) <= NEAR_CANDIDATES:
        return valid
    known, parts = set(valid), path.split(".")
    parent = next(
        (p for p in (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)) if p in known),
        None,
    )
    if parent is not None:
        pool = [p for p in valid if p.startswith(f"{parent}.")]
    else:
        first: dict[str, str] = {}
        for p in valid:
            first.setdefault(re.sub(r"[0-9]+", "#", p), p)
        pool = list(first.values())
    return pool[:: math.ceil(len(pool) / NEAR_CANDIDATES)]
