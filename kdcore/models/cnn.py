"""The ``cnn`` family: an explicit list of layers, each with a stable name."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from kdcore.models.layers import MaxoutConv2d, MaxoutLinear
from kdcore.specs import CnnSpec, SpecError


def build_cnn(spec: CnnSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the stack, checking each layer against the shape that reaches it."""
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    shape = tuple(input_shape)
    for i, layer in enumerate(spec.layers):
        name = layer.name or str(i)
        where = f"layer {i} ({name!r}, {layer.type})"
        module = _make(layer, shape, num_classes, where)
        shape = _probe(module, shape, where)
        modules[name] = module
    if shape != (num_classes,):
        raise SpecError(
            f"the last layer outputs shape {shape}, but the data has {num_classes} classes: "
            f'end the stack with {{"type": "flatten"}} (if needed) and {{"type": "linear"}}'
        )
    return nn.Sequential(modules)


def _make(layer: object, shape: tuple[int, ...], num_classes: int, where: str) -> nn.Module:
    from kdcore import specs as s

    def need_image() -> int:
        if len(shape) != 3:
            raise SpecError(f"{where} needs an image input (C, H, W), but receives shape {shape}")
        return shape[0]

    def need_vector() -> int:
        if len(shape) != 1:
            raise SpecError(
                f"{where} needs a vector input, but receives shape {shape}: "
                'put {"type": "flatten"} before it'
            )
        return shape[0]

    match layer:
        case s.ConvLayer():
            return nn.Conv2d(
                need_image(),
                layer.out,
                layer.k,
                stride=layer.stride,
                padding=layer.pad,
                bias=layer.bias,
            )
        case s.MaxoutConvLayer():
            return MaxoutConv2d(
                need_image(),
                layer.out,
                layer.k,
                stride=layer.stride,
                padding=layer.pad,
                pieces=layer.pieces,
                bias=layer.bias,
            )
        case s.BatchNormLayer():
            if len(shape) == 3:
                return nn.BatchNorm2d(shape[0])
            return nn.BatchNorm1d(need_vector())
        case s.ReluLayer():
            return nn.ReLU()
        case s.FlattenLayer():
            return nn.Flatten()
        case s.PoolLayer():
            need_image()
            pool = nn.MaxPool2d if layer.type == "maxpool" else nn.AvgPool2d
            return pool(layer.k, stride=layer.stride or layer.k, padding=layer.pad)
        case s.GlobalAvgPoolLayer():
            need_image()
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        case s.DropoutLayer():
            return nn.Dropout(layer.p)
        case s.LinearLayer():
            return nn.Linear(need_vector(), layer.out or num_classes, bias=layer.bias)
        case s.MaxoutLinearLayer():
            return MaxoutLinear(need_vector(), layer.out or num_classes, pieces=layer.pieces)
    raise SpecError(f"{where}: unsupported layer")  # pragma: no cover - the union is closed


def _probe(module: nn.Module, shape: tuple[int, ...], where: str) -> tuple[int, ...]:
    """The per-sample output shape of ``module``; an impossible shape becomes a SpecError."""
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, *shape))
    except RuntimeError as exc:
        raise SpecError(f"{where} cannot take input shape {shape}: {exc}") from exc
    finally:
        module.train()
    if 0 in out.shape:
        raise SpecError(
            f"{where} turns input shape {shape} into an empty output {tuple(out.shape[1:])}"
        )
    return tuple(out.shape[1:])
