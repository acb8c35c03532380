"""The factory that builds a ``torch.nn.Module`` from a spec of any registered family.

Families live in the registry of :mod:`kdcore.contract`; this module resolves a family's
torch builder (see :func:`kdcore.contract.register_family`).
"""

from __future__ import annotations

from torch import nn

from kdcore.contract import Spec, get_family, layer_shapes


def build_model(
    spec: Spec, input_shape: tuple[int, ...] | list[int], num_classes: int
) -> nn.Module:
    """Build the model a spec describes, for per-sample ``input_shape`` and ``num_classes``.

    The family's torch-free shape function checks the spec against the input first, so a
    model that cannot be built fails with the same message as the service's submit check.

    Raises:
        SpecError: unknown family (the message lists the valid ones) or impossible shapes.
    """
    shape = tuple(int(d) for d in input_shape)
    layer_shapes(spec, shape, num_classes)
    return get_family(spec.family).builder()(spec, shape, num_classes)


__all__ = ["build_model"]
