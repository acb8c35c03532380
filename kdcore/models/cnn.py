"""The ``cnn`` family's torch builder; its spec and shapes: :mod:`kdcore.contract.families.cnn`."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from kdcore.contract import CnnSpec, layer_shapes
from kdcore.contract.families import cnn as c
from kdcore.models.layers import MaxoutConv2d, MaxoutLinear


def build_cnn(spec: CnnSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the stack; each layer's input shape comes from the family's shape function."""
    shapes = layer_shapes(spec, input_shape, num_classes)  # raises SpecError on bad shapes
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    shape = tuple(input_shape)
    for i, layer in enumerate(spec.layers):
        name = layer.name or str(i)
        modules[name] = _make(layer, shape, num_classes)
        shape = shapes[name]
    return nn.Sequential(modules)


def _make(layer: c.Layer, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """One layer for its (already checked) input ``shape``."""
    match layer:
        case c.ConvLayer():
            return nn.Conv2d(
                shape[0],
                layer.out,
                layer.k,
                stride=layer.stride,
                padding=layer.pad,
                bias=layer.bias,
            )
        case c.MaxoutConvLayer():
            return MaxoutConv2d(
                shape[0],
                layer.out,
                layer.k,
                stride=layer.stride,
                padding=layer.pad,
                pieces=layer.pieces,
                bias=layer.bias,
            )
        case c.BatchNormLayer():
            norm = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
            return norm(shape[0])
        case c.ReluLayer():
            return nn.ReLU()
        case c.FlattenLayer():
            return nn.Flatten()
        case c.PoolLayer():
            pool = nn.MaxPool2d if layer.type == "maxpool" else nn.AvgPool2d
            return pool(layer.k, stride=layer.stride or layer.k, padding=layer.pad)
        case c.GlobalAvgPoolLayer():
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        case c.DropoutLayer():
            return nn.Dropout(layer.p)
        case c.LinearLayer():
            return nn.Linear(shape[0], layer.out or num_classes, bias=layer.bias)
        case c.MaxoutLinearLayer():
            return MaxoutLinear(shape[0], layer.out or num_classes, pieces=layer.pieces)
    raise ValueError(f"unsupported layer {layer!r}")  # pragma: no cover - the union is closed
