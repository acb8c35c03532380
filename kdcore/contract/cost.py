"""What a model costs, worked out from its spec without torch: parameters, multiply-
accumulates and activations per sample, and its size.

A service checks these at submission against its operator's limits, before a worker builds
anything. They are cheap to compute because the spec's fields bound the number of layers
(:mod:`kdcore.contract.bounds`): one pass over the layer shapes the family already lists.

- ``params``: trainable parameters, as ``sum(p.numel() for p in model.parameters())``
  counts them (batchnorm's running statistics are buffers, not parameters).
- ``macs``: multiply-accumulates of one sample's forward pass in convolutions and linear
  layers (``k·k·C_in·C_out·H_out·W_out``; ``F_in·F_out``), biases, normalization, pooling
  and activations left out: what :func:`kdcore.inspection.inspect_model` counts.
- ``activations``: the sum of every module's output size for one sample, containers (a
  residual block, a stage) included. An estimate of what training keeps for the backward
  pass: above it for models whose containers repeat their last layer's output, below it
  for layers that save their input too (batchnorm); within a small factor either way.
- ``model_bytes``: ``params`` as float32, the size of the exported weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kdcore.contract.registry import Shape, Spec, get_family, layer_shapes

FLOAT32 = 4  # bytes


@dataclass(frozen=True)
class ModelCost:
    """A model's cost; ``params`` and ``macs`` are None for a family with no cost function."""

    params: int | None
    macs: int | None
    activations: int

    @property
    def model_bytes(self) -> int | None:
        return None if self.params is None else self.params * FLOAT32

    def activation_bytes(self, batch_size: int) -> int:
        """The activations of one training batch, as float32."""
        return self.activations * batch_size * FLOAT32


def model_cost(
    spec: Spec,
    input_shape: Shape,
    num_classes: int,
    *,
    shapes: dict[str, Shape] | None = None,
) -> ModelCost:
    """The cost of ``spec`` built for samples of ``input_shape`` and ``num_classes`` classes.

    Args:
        shapes: the model's :func:`kdcore.contract.layer_shapes`, when the caller has them.

    Raises:
        SpecError: as :func:`kdcore.contract.layer_shapes`.
    """
    input_shape = tuple(input_shape)
    if shapes is None:
        shapes = layer_shapes(spec, input_shape, num_classes)
    family = get_family(spec.family)
    params, macs = family.cost(spec, input_shape, shapes) if family.cost else (None, None)
    activations = sum(math.prod(s) for s in shapes.values())
    return ModelCost(params=params, macs=macs, activations=activations)


# -- the pieces a family's cost function adds up: (params, macs) of one layer ---------------

Cost = tuple[int, int]


def conv(c_in: int, c_out: int, k: int, out: Sequence[int], *, bias: bool) -> Cost:
    """A ``k``×``k`` convolution whose output map is ``out`` ``(H, W)`` (or ``(C, H, W)``)."""
    weights = k * k * c_in * c_out
    return weights + (c_out if bias else 0), weights * out[-2] * out[-1]


def linear(f_in: int, f_out: int, *, bias: bool = True) -> Cost:
    return f_in * f_out + (f_out if bias else 0), f_in * f_out


def batchnorm(channels: int) -> Cost:
    return 2 * channels, 0


def total(parts: Iterable[Cost]) -> Cost:
    params = macs = 0
    for p, m in parts:
        params, macs = params + p, macs + m
    return params, macs
