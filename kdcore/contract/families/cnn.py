"""Architecture specs: one JSON language for students and for teachers given as weights.

A spec is a JSON object whose ``family`` picks the grammar:

``cnn``
    ``{"family": "cnn", "layers": [<layer>, ...]}``, an explicit stack. Each layer is an
    object with a ``type`` and an optional ``name`` (its dotted path; default: its index
    in the list, as a string). Types and their fields:

    - ``conv``: ``out``, ``k`` (3), ``stride`` (1), ``pad`` (0), ``bias`` (true)
    - ``maxout_conv``: a conv with ``pieces`` (2) outputs per channel, max over pieces
      (Goodfellow et al. 2013, the unit of the FitNets paper); fields of ``conv`` plus ``pieces``
    - ``batchnorm``, ``relu``, ``flatten``
    - ``maxpool`` / ``avgpool``: ``k`` (2), ``stride`` (= ``k``), ``pad`` (0)
    - ``global_avgpool``: averages each channel to one value (output ``(C,)``)
    - ``dropout``: ``p`` (0.5)
    - ``linear``: ``out`` (default: the number of classes), ``bias`` (true)
    - ``maxout_linear``: ``out`` (default: classes), ``pieces`` (2)

    The last layer's output must be a vector of ``num_classes`` logits.

``resnet``
    ``{"family": "resnet", "depth": 20, "width": 1}``: the CIFAR ResNet of He et al. 2016
    (depth = 6n + 2, three stages of n basic blocks with 16·w, 32·w, 64·w channels).
    ``resnet8x4`` is depth 8, width 4; ``resnet32x4`` depth 32, width 4.

``wrn``
    ``{"family": "wrn", "depth": 16, "width": 2, "dropout": 0.0}``: the wide ResNet of
    Zagoruyko & Komodakis 2016 (depth = 6n + 4, pre-activation blocks, 16, 16·k, 32·k, 64·k
    channels); ``wrn-40-2`` is depth 40, width 2.

``mlp``
    ``{"family": "mlp", "hidden": [1200, 1200], "dropout": 0.0, "input_dropout": 0.0}``:
    flatten, then ``Linear → ReLU → Dropout`` per hidden size, then a linear head
    (Hinton et al.'s MNIST nets: 2×1200 teacher, 2×800 student).

Input shape and class count are not part of a spec: they come from the data.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Layer(_Strict):
    name: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConvLayer(_Layer):
    type: Literal["conv"]
    out: int = Field(gt=0)
    k: int = Field(default=3, gt=0)
    stride: int = Field(default=1, gt=0)
    pad: int = Field(default=0, ge=0)
    bias: bool = True


class MaxoutConvLayer(_Layer):
    type: Literal["maxout_conv"]
    out: int = Field(gt=0)
    k: int = Field(default=3, gt=0)
    stride: int = Field(default=1, gt=0)
    pad: int = Field(default=0, ge=0)
    pieces: int = Field(default=2, ge=2)
    bias: bool = True


class BatchNormLayer(_Layer):
    type: Literal["batchnorm"]


class ReluLayer(_Layer):
    type: Literal["relu"]


class FlattenLayer(_Layer):
    type: Literal["flatten"]


class PoolLayer(_Layer):
    type: Literal["maxpool", "avgpool"]
    k: int = Field(default=2, gt=0)
    stride: int | None = Field(default=None, gt=0)
    pad: int = Field(default=0, ge=0)


class GlobalAvgPoolLayer(_Layer):
    type: Literal["global_avgpool"]


class DropoutLayer(_Layer):
    type: Literal["dropout"]
    p: float = Field(default=0.5, ge=0.0, lt=1.0)


class LinearLayer(_Layer):
    type: Literal["linear"]
    out: int | None = Field(default=None, gt=0)
    bias: bool = True


class MaxoutLinearLayer(_Layer):
    type: Literal["maxout_linear"]
    out: int | None = Field(default=None, gt=0)
    pieces: int = Field(default=2, ge=2)


Layer = Annotated[
    ConvLayer
    | MaxoutConvLayer
    | BatchNormLayer
    | ReluLayer
    | FlattenLayer
    | PoolLayer
    | GlobalAvgPoolLayer
    | DropoutLayer
    | LinearLayer
    | MaxoutLinearLayer,
    Field(discriminator="type"),
]


class CnnSpec(_Strict):
    family: Literal["cnn"]
    layers: list[Layer] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> CnnSpec:
        seen: set[str] = set()
        for i, layer in enumerate(self.layers):
            name = layer.name or str(i)
            if name in seen:
                raise ValueError(f"layer name {name!r} is used twice; every layer needs its own")
            seen.add(name)
        return self


class ResNetSpec(_Strict):
    family: Literal["resnet"]
    depth: int = Field(default=20, ge=8)
    width: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _depth(self) -> ResNetSpec:
        if (self.depth - 2) % 6:
            raise ValueError(
                f"resnet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110...), got {self.depth}"
            )
        return self


class WrnSpec(_Strict):
    family: Literal["wrn"]
    depth: int = Field(default=16, ge=10)
    width: int = Field(default=2, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _depth(self) -> WrnSpec:
        if (self.depth - 4) % 6:
            raise ValueError(f"wrn depth must be 6n+4 (10, 16, 22, 28, 40...), got {self.depth}")
        return self


class MlpSpec(_Strict):
    family: Literal["mlp"]
    hidden: list[Annotated[int, Field(gt=0)]] = Field(min_length=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    input_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


ArchSpec = Annotated[CnnSpec | ResNetSpec | WrnSpec | MlpSpec, Field(discriminator="family")]

_ADAPTER: TypeAdapter[CnnSpec | ResNetSpec | WrnSpec | MlpSpec] = TypeAdapter(ArchSpec)
FAMILIES = ("cnn", "resnet", "wrn", "mlp")


class SpecError(ValueError):
    """A spec that does not parse, or cannot take the given input; the message says why."""


def parse_arch(data: str | bytes | dict[str, Any]) -> CnnSpec | ResNetSpec | WrnSpec | MlpSpec:
    """Parse and validate an architecture spec from JSON text or a dict.

    Raises:
        SpecError: with every problem found, and the valid choices where a name is wrong.
    """
    try:
        obj = json.loads(data) if isinstance(data, str | bytes) else data
    except json.JSONDecodeError as exc:
        raise SpecError(f"architecture spec is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise SpecError('architecture spec must be a JSON object such as {"family": "mlp", ...}')
    family = obj.get("family")
    if family not in FAMILIES:
        raise SpecError(f"unknown family {family!r}; valid families: {', '.join(FAMILIES)}")
    try:
        return _ADAPTER.validate_python(obj)
    except ValidationError as exc:
        raise SpecError(_describe(exc)) from exc


def arch_json_schema() -> dict[str, Any]:
    """The published JSON Schema of architecture specs."""
    return _ADAPTER.json_schema()


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        msg = err["msg"]
        if err["type"] == "union_tag_invalid":
            ctx = err.get("ctx", {})
            msg = f"unknown {ctx.get('discriminator', 'tag')} {ctx.get('tag')!r}; valid: " + str(
                ctx.get("expected_tags")
            )
        lines.append(f"{where}: {msg}")
    return "invalid architecture spec: " + "; ".join(lines)
