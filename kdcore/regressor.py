"""The FitNets regressor: maps the student's guided layer onto the teacher's hint layer."""

from __future__ import annotations

import math

from torch import nn


class RegressorError(ValueError):
    """Guided and hint layers whose shapes no regressor can join; the message says why."""


def build_regressor(guided_shape: tuple[int, ...], hint_shape: tuple[int, ...]) -> nn.Module:
    """The regressor ``r`` of FitNets §2.2 for per-sample shapes ``(O_g, N_g1, N_g2)`` → hint.

    - Image maps, guided at least as large as the hint: a convolution with kernel
      ``k_i = N_g,i − N_h,i + 1`` and no padding, so that ``N_g − k + 1 = N_h``, with
      ``O_h`` output channels: ``k1·k2·O_h·O_g`` weights plus ``O_h`` biases (1×1 when the
      spatial sizes match).
    - Guided map smaller than the hint (not covered by the paper): the transposed
      convolution with ``k_i = N_h,i − N_g,i + 1``, whose output is ``N_g + k − 1 = N_h``.
      It is the mirror of the paper's rule, with the same ``k1·k2·O_h·O_g`` weights, and
      keeps the hint itself untouched (pooling the hint instead would change what is taught).
      A map larger in one direction and smaller in the other is refused.
    - Vectors ``(F_g,)`` → ``(F_h,)``: a linear layer.
    """
    g, h = tuple(guided_shape), tuple(hint_shape)
    if len(g) == 1 and len(h) == 1:
        return nn.Linear(g[0], h[0])
    if len(g) == 3 and len(h) == 3:
        (o_g, *n_g), (o_h, *n_h) = g, h
        if all(a >= b for a, b in zip(n_g, n_h, strict=True)):
            k = (n_g[0] - n_h[0] + 1, n_g[1] - n_h[1] + 1)
            return nn.Conv2d(o_g, o_h, kernel_size=k)
        if all(a <= b for a, b in zip(n_g, n_h, strict=True)):
            k = (n_h[0] - n_g[0] + 1, n_h[1] - n_g[1] + 1)
            return nn.ConvTranspose2d(o_g, o_h, kernel_size=k)
        raise RegressorError(
            f"guided map {g} is larger than hint map {h} in one direction and smaller in the "
            "other; pick layers whose spatial sizes compare the same way in both"
        )
    if len(g) == 1 and len(h) == 3 or len(g) == 3 and len(h) == 1:
        raise RegressorError(
            f"cannot regress guided shape {g} onto hint shape {h}: pick two image layers "
            f"(C, H, W) or two vector layers (F,), e.g. both before or both after the flatten "
            f"(hint has {math.prod(h)} values)"
        )
    raise RegressorError(f"unsupported layer shapes: guided {g}, hint {h}")
