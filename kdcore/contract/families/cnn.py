"""The ``cnn`` family: an explicit stack of layers, each with a stable name.

``{"family": "cnn", "layers": [<layer>, ...]}``. Each layer is an object with a ``type``
and an optional ``name`` (its dotted path; default: its index in the list, as a string).
Types and their fields:

- ``conv``: ``out``, ``k`` (3), ``stride`` (1), ``pad`` (0), ``bias`` (true)
- ``maxout_conv``: a conv with ``pieces`` (2) outputs per channel, max over pieces
  (Goodfellow et al. 2013, the unit of the FitNets paper); fields of ``conv`` plus ``pieces``
- ``batchnorm``, ``relu``, ``flatten``
- ``maxpool`` / ``avgpool``: ``k`` (2), ``stride`` (= ``k``), ``pad`` (0)
- ``global_avgpool``: averages each channel to one value (output ``(C,)``)
- ``dropout``: ``p`` (0.5)
- ``linear``: ``out`` (default: the number of classes), ``bias`` (true)
- ``maxout_linear``: ``out`` (default: classes), ``pieces`` (2)

The last layer's output must be a vector of ``num_classes`` logits. The torch builder is
:func:`kdcore.models.cnn.build_cnn`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kdcore.contract.bounds import (
    MAX_CHANNELS,
    MAX_FEATURES,
    MAX_KERNEL,
    MAX_LAYERS,
    MAX_PIECES,
    MAX_POOL,
)
from kdcore.contract.cost import Cost, batchnorm, conv, linear, total
from kdcore.contract.errors import SpecError
from kdcore.contract.registry import Family, Shape, Spec, register_family


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Layer(_Strict):
    name: str | None = Field(default=None, max_length=100, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConvLayer(_Layer):
    type: Literal["conv"]
    out: int = Field(gt=0, le=MAX_CHANNELS)
    k: int = Field(default=3, gt=0, le=MAX_KERNEL)
    stride: int = Field(default=1, gt=0, le=MAX_KERNEL)
    pad: int = Field(default=0, ge=0, le=MAX_KERNEL)
    bias: bool = True


class MaxoutConvLayer(_Layer):
    type: Literal["maxout_conv"]
    out: int = Field(gt=0, le=MAX_CHANNELS)
    k: int = Field(default=3, gt=0, le=MAX_KERNEL)
    stride: int = Field(default=1, gt=0, le=MAX_KERNEL)
    pad: int = Field(default=0, ge=0, le=MAX_KERNEL)
    pieces: int = Field(default=2, ge=2, le=MAX_PIECES)
    bias: bool = True


class BatchNormLayer(_Layer):
    type: Literal["batchnorm"]


class ReluLayer(_Layer):
    type: Literal["relu"]


class FlattenLayer(_Layer):
    type: Literal["flatten"]


class PoolLayer(_Layer):
    type: Literal["maxpool", "avgpool"]
    k: int = Field(default=2, gt=0, le=MAX_POOL)
    stride: int | None = Field(default=None, gt=0, le=MAX_POOL)
    pad: int = Field(default=0, ge=0, le=MAX_POOL // 2)


class GlobalAvgPoolLayer(_Layer):
    type: Literal["global_avgpool"]


class DropoutLayer(_Layer):
    type: Literal["dropout"]
    p: float = Field(default=0.5, ge=0.0, lt=1.0)


class LinearLayer(_Layer):
    type: Literal["linear"]
    out: int | None = Field(default=None, gt=0, le=MAX_FEATURES)
    bias: bool = True


class MaxoutLinearLayer(_Layer):
    type: Literal["maxout_linear"]
    out: int | None = Field(default=None, gt=0, le=MAX_FEATURES)
    pieces: int = Field(default=2, ge=2, le=MAX_PIECES)


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


class CnnSpec(Spec):
    family: Literal["cnn"]
    layers: list[Layer] = Field(min_length=1, max_length=MAX_LAYERS)

    @model_validator(mode="after")
    def _unique_names(self) -> CnnSpec:
        seen: set[str] = set()
        for i, layer in enumerate(self.layers):
            name = layer.name or str(i)
            if name in seen:
                raise ValueError(f"layer name {name!r} is used twice; every layer needs its own")
            seen.add(name)
        return self


def cnn_shapes(spec: CnnSpec, input_shape: Shape, num_classes: int) -> dict[str, Shape]:
    """Each layer's output shape, by convolution and pooling arithmetic."""
    shapes: dict[str, Shape] = {}
    shape = tuple(input_shape)
    for i, layer in enumerate(spec.layers):
        name = layer.name or str(i)
        where = f"layer {i} ({name!r}, {layer.type})"
        subs: dict[str, Shape] = {}
        match layer:
            case ConvLayer() | MaxoutConvLayer():
                _image(shape, where)
                spatial = _window(shape, layer.k, layer.stride, layer.pad, where)
                if isinstance(layer, MaxoutConvLayer):
                    subs[f"{name}.conv"] = (layer.out * layer.pieces, *spatial)
                shape = (layer.out, *spatial)
            case PoolLayer():
                _image(shape, where)
                if 2 * layer.pad > layer.k:
                    raise SpecError(f"{where}: pad {layer.pad} is over half the kernel {layer.k}")
                shape = (
                    shape[0],
                    *_window(shape, layer.k, layer.stride or layer.k, layer.pad, where),
                )
            case GlobalAvgPoolLayer():
                _image(shape, where)
                subs = {f"{name}.0": (shape[0], 1, 1), f"{name}.1": (shape[0],)}
                shape = (shape[0],)
            case FlattenLayer():
                shape = (math.prod(shape),)
            case LinearLayer() | MaxoutLinearLayer():
                _vector(shape, where)
                out = layer.out or num_classes
                if isinstance(layer, MaxoutLinearLayer):
                    subs[f"{name}.linear"] = (out * layer.pieces,)
                shape = (out,)
            case BatchNormLayer():
                if len(shape) not in (1, 3):
                    _vector(shape, where)
            case _:  # relu and dropout keep the shape
                pass
        shapes[name] = shape
        shapes |= subs  # submodules come after their parent in named_modules()
    if shape != (num_classes,):
        raise SpecError(
            f"the last layer outputs shape {shape}, but the data has {num_classes} "
            'classes: end the stack with {"type": "flatten"} (if needed) and {"type": "linear"}'
        )
    return shapes


def _image(shape: Shape, where: str) -> None:
    if len(shape) != 3:
        raise SpecError(f"{where} needs an image input (C, H, W), but receives shape {shape}")


def _vector(shape: Shape, where: str) -> None:
    if len(shape) != 1:
        raise SpecError(
            f'{where} needs a vector input, but receives shape {shape}: put {{"type": '
            '"flatten"} before it'
        )


def _window(shape: Shape, k: int, stride: int, pad: int, where: str) -> tuple[int, int]:
    """Output height and width of a ``k``×``k`` window (convolution or pooling)."""
    h, w = (size + 2 * pad for size in shape[1:])
    if k > min(h, w):
        raise SpecError(
            f"{where} cannot take input shape {shape}: its {k}x{k} window is larger than the "
            f"padded input {h}x{w}; use a smaller kernel, more padding or fewer downsampling "
            "layers before it"
        )
    return (h - k) // stride + 1, (w - k) // stride + 1


def cnn_cost(spec: CnnSpec, input_shape: Shape, shapes: Mapping[str, Shape]) -> Cost:
    """Each layer's from its input shape (the one before it) and its output shape."""
    parts: list[Cost] = []
    shape = tuple(input_shape)
    for i, layer in enumerate(spec.layers):
        out = shapes[layer.name or str(i)]
        match layer:
            case ConvLayer():
                parts.append(conv(shape[0], layer.out, layer.k, out, bias=layer.bias))
            case MaxoutConvLayer():
                channels = layer.out * layer.pieces
                parts.append(conv(shape[0], channels, layer.k, out, bias=layer.bias))
            case BatchNormLayer():
                parts.append(batchnorm(shape[0]))
            case LinearLayer():
                parts.append(linear(shape[0], out[0], bias=layer.bias))
            case MaxoutLinearLayer():
                parts.append(linear(shape[0], out[0] * layer.pieces))
        shape = out
    return total(parts)


CNN = register_family(
    Family(
        "cnn",
        spec=CnnSpec,
        shapes=cnn_shapes,
        build="kdcore.models.cnn:build_cnn",
        cost=cnn_cost,
    )
)
