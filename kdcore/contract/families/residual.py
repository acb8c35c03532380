"""The CIFAR residual families: ``resnet`` (He et al. 2016) and ``wrn`` (Zagoruyko 2016).

``{"family": "resnet", "depth": 20, "width": 1}``: depth = 6n + 2, three stages of n basic
blocks with 16·w, 32·w, 64·w channels (``resnet8x4`` is depth 8, width 4).

``{"family": "wrn", "depth": 16, "width": 2, "dropout": 0.0}``: depth = 6n + 4,
pre-activation blocks, 16, 16·k, 32·k, 64·k channels (``wrn-40-2`` is depth 40, width 2).

The torch builders are in :mod:`kdcore.models.resnet`; the shape functions here follow
their module order (``named_modules()``), checked by tests against the built models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Literal

from pydantic import Field, model_validator

from kdcore.contract.cost import Cost, batchnorm, conv, linear, total
from kdcore.contract.errors import SpecError
from kdcore.contract.registry import Family, Shape, Spec, register_family


class ResNetSpec(Spec):
    family: Literal["resnet"]
    # ResNet-1202, He et al.'s deepest CIFAR net; 64·64 = 4,096 channels in the last stage.
    depth: int = Field(default=20, ge=8, le=1202)
    width: int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _depth(self) -> ResNetSpec:
        if (self.depth - 2) % 6:
            raise ValueError(
                f"resnet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110...), got {self.depth}"
            )
        return self

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6


class WrnSpec(Spec):
    family: Literal["wrn"]
    depth: int = Field(default=16, ge=10, le=1000)
    width: int = Field(default=2, ge=1, le=64)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _depth(self) -> WrnSpec:
        if (self.depth - 4) % 6:
            raise ValueError(f"wrn depth must be 6n+4 (10, 16, 22, 28, 40...), got {self.depth}")
        return self

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 4) // 6


def _image(family: str, input_shape: Shape) -> Shape:
    if len(input_shape) != 3:
        raise SpecError(
            f"family {family!r} needs image input (C, H, W), but the data has shape "
            f"{tuple(input_shape)}; use the mlp family for vectors"
        )
    return input_shape


def _down(size: int, stride: int) -> int:
    """A 3×3 convolution with padding 1 (or a 1×1 without) at ``stride``."""
    return (size - 1) // stride + 1


BlockShapes = Callable[[str, Shape, Shape], dict[str, Shape]]


def _stages(
    stem: Shape, widths: tuple[int, ...], blocks: int, name: str, block: BlockShapes
) -> tuple[dict[str, Shape], Shape]:
    """Three stages of ``blocks`` blocks (the first of stages 2 and 3 at stride 2).

    ``block(path, entry, out)`` gives a block's own entries (``path`` itself first) from its
    input and output shapes. Returns the shapes and the last stage's output.
    """
    c, h, w = stem
    shapes: dict[str, Shape] = {}
    for s, width in enumerate(widths, start=1):
        stage: dict[str, Shape] = {}
        for j in range(blocks):
            stride = 2 if s > 1 and j == 0 else 1
            entry, (h, w) = (c, h, w), (_down(h, stride), _down(w, stride))
            stage |= block(f"{name}{s}.{j}", entry, (width, h, w))
            c = width
        shapes[f"{name}{s}"] = (c, h, w)
        shapes |= stage
    return shapes, (c, h, w)


def _basic_block(p: str, entry: Shape, out: Shape) -> dict[str, Shape]:
    shapes = {p: out} | {f"{p}.{m}": out for m in ("conv1", "bn1", "relu1", "conv2", "bn2")}
    if entry != out:  # projection shortcut: 1×1 conv + batchnorm
        shapes |= {f"{p}.shortcut": out, f"{p}.shortcut.0": out, f"{p}.shortcut.1": out}
    else:
        shapes[f"{p}.shortcut"] = entry
    return shapes | {f"{p}.relu2": out}


def _wide_block(p: str, entry: Shape, out: Shape) -> dict[str, Shape]:
    shapes = {p: out, f"{p}.bn1": entry, f"{p}.relu1": entry}
    shapes |= {f"{p}.{m}": out for m in ("conv1", "bn2", "relu2", "dropout", "conv2")}
    return shapes | {f"{p}.shortcut": out}  # a 1×1 projection, or the identity (entry == out)


def resnet_shapes(spec: ResNetSpec, input_shape: Shape, num_classes: int) -> dict[str, Shape]:
    """conv1, bn1, relu → layer1..3 of basic blocks → pool, flatten, fc."""
    _, h, w = _image("resnet", input_shape)
    stem = (16 * spec.width, h, w)
    widths = (16 * spec.width, 32 * spec.width, 64 * spec.width)
    stages, (c, _, _) = _stages(stem, widths, spec.blocks_per_stage, "layer", _basic_block)
    head = {"pool": (c, 1, 1), "flatten": (c,), "fc": (num_classes,)}
    return {"conv1": stem, "bn1": stem, "relu": stem} | stages | head


def wrn_shapes(spec: WrnSpec, input_shape: Shape, num_classes: int) -> dict[str, Shape]:
    """conv1 → block1..3 of pre-activation wide blocks → bn, relu, pool, flatten, fc."""
    _, h, w = _image("wrn", input_shape)
    stem = (16, h, w)
    widths = (16 * spec.width, 32 * spec.width, 64 * spec.width)
    stages, last = _stages(stem, widths, spec.blocks_per_stage, "block", _wide_block)
    c = last[0]
    head = {"bn": last, "relu": last, "pool": (c, 1, 1), "flatten": (c,), "fc": (num_classes,)}
    return {"conv1": stem} | stages | head


def _blocks(
    shapes: Mapping[str, Shape], stem: Shape, blocks: int, name: str
) -> Iterator[tuple[Shape, Shape]]:
    """Each block's input and output shapes, in order."""
    entry = stem
    for s in (1, 2, 3):
        for j in range(blocks):
            out = shapes[f"{name}{s}.{j}"]
            yield entry, out
            entry = out


def resnet_cost(spec: ResNetSpec, input_shape: Shape, shapes: Mapping[str, Shape]) -> Cost:
    stem = shapes["conv1"]
    parts = [conv(input_shape[0], stem[0], 3, stem, bias=False), batchnorm(stem[0])]
    for entry, out in _blocks(shapes, stem, spec.blocks_per_stage, "layer"):
        c = out[0]
        parts += [conv(entry[0], c, 3, out, bias=False), batchnorm(c)]
        parts += [conv(c, c, 3, out, bias=False), batchnorm(c)]
        if entry != out:  # the projection shortcut
            parts += [conv(entry[0], c, 1, out, bias=False), batchnorm(c)]
    parts.append(linear(shapes["flatten"][0], shapes["fc"][0]))
    return total(parts)


def wrn_cost(spec: WrnSpec, input_shape: Shape, shapes: Mapping[str, Shape]) -> Cost:
    stem = shapes["conv1"]
    parts = [conv(input_shape[0], stem[0], 3, stem, bias=False)]
    for entry, out in _blocks(shapes, stem, spec.blocks_per_stage, "block"):
        c = out[0]
        parts += [batchnorm(entry[0]), conv(entry[0], c, 3, out, bias=False), batchnorm(c)]
        parts.append(conv(c, c, 3, out, bias=False))
        if entry != out:
            parts.append(conv(entry[0], c, 1, out, bias=False))
    parts += [batchnorm(shapes["bn"][0]), linear(shapes["flatten"][0], shapes["fc"][0])]
    return total(parts)


RESNET = register_family(
    Family(
        "resnet",
        spec=ResNetSpec,
        shapes=resnet_shapes,
        build="kdcore.models.resnet:ResNet",
        cost=resnet_cost,
    )
)
WRN = register_family(
    Family(
        "wrn",
        spec=WrnSpec,
        shapes=wrn_shapes,
        build="kdcore.models.resnet:WideResNet",
        cost=wrn_cost,
    )
)
