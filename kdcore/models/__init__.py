"""Model families and the factory that builds a ``torch.nn.Module`` from a spec.

New families plug in with :func:`register_family`; :func:`build_model` looks them up by the
spec's ``family``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from kdcore.models.cnn import build_cnn
from kdcore.models.mlp import build_mlp
from kdcore.models.resnet import ResNet, WideResNet
from kdcore.specs import SpecError, parse_arch

Builder = Callable[[Any, tuple[int, ...], int], nn.Module]
_FAMILIES: dict[str, Builder] = {}


def register_family(name: str, builder: Builder) -> None:
    """Register ``builder(spec, input_shape, num_classes) -> nn.Module`` for ``family == name``."""
    _FAMILIES[name] = builder


def _image_net(cls: Callable[[Any, int, int], nn.Module]) -> Builder:
    def build(spec: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if len(input_shape) != 3:
            raise SpecError(
                f"family {spec.family!r} needs image input (C, H, W), but the data has shape "
                f"{tuple(input_shape)}; use the mlp family for vectors"
            )
        return cls(spec, input_shape[0], num_classes)

    return build


register_family("cnn", build_cnn)
register_family("mlp", build_mlp)
register_family("resnet", _image_net(ResNet))
register_family("wrn", _image_net(WideResNet))


def build_model(spec: Any, input_shape: tuple[int, ...] | list[int], num_classes: int) -> nn.Module:
    """Build the model a spec describes, for per-sample ``input_shape`` and ``num_classes``.

    Args:
        spec: a parsed spec, or JSON text / dict that :func:`kdcore.specs.parse_arch` accepts.
        input_shape: one sample's shape, e.g. ``(3, 32, 32)``.
        num_classes: number of output logits.

    Raises:
        SpecError: unknown family (the message lists the valid ones) or impossible shapes.
    """
    if isinstance(spec, str | bytes | dict):
        spec = parse_arch(spec)
    if num_classes < 2:
        raise SpecError(f"a classifier needs at least 2 classes, got {num_classes}")
    builder = _FAMILIES.get(spec.family)
    if builder is None:
        raise SpecError(f"unknown family {spec.family!r}; valid: {', '.join(sorted(_FAMILIES))}")
    return builder(spec, tuple(int(d) for d in input_shape), num_classes)


__all__ = ["build_model", "register_family"]
