"""A frozen teacher made faster for computing logits: BatchNorm folded into the layer before.

A frozen teacher's BatchNorm is a fixed per-channel scale and shift, so it can be merged
into the weights of the convolution (or linear layer) that feeds it, as inference engines
do. The logits change by float rounding only (3e-6 at most on a ResNet-20 in fp32), and the
teacher's forward pass, the largest cost of distillation, gets much cheaper: measured on this
project's CPU at batch 128 in channels-last, ResNet-20 inference went 1.9× faster in fp32 and
2.5× in bf16 (docs/results.md).

The folding is torch.fx's (``torch.fx.experimental.optimization.fuse``): it traces the
model and rewrites each conv→BatchNorm pair whose conv output has no other use. kdcore uses
the folded copy for logits only (the KD stage, the teacher cache's build); FitNets hints and
the report use the teacher as given, whose layer paths and parameter counts are the user's.
"""

from __future__ import annotations

import warnings

from torch import nn
from torch.fx.experimental.optimization import fuse

from kdcore.weights import freeze, is_program

__all__ = ["fold_batchnorm"]


def fold_batchnorm(teacher: nn.Module) -> nn.Module:
    """A frozen copy of ``teacher`` with BatchNorm folded in, or ``teacher`` itself.

    ``teacher`` itself when there is nothing to fold, when it is a code checkpoint (run as
    given, see :func:`kdcore.weights.is_program`), or when torch.fx cannot trace it
    (data-dependent control flow): folding is an optimization, never a reason to fail.
    """
    if is_program(teacher) or not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in teacher.modules()
    ):
        return teacher
    try:
        folded = fuse(teacher)
    except Exception as exc:  # tracing raises whatever the model's forward raises
        warnings.warn(
            f"could not fold the teacher's BatchNorm layers ({type(exc).__name__}: {exc}); "
            "running it unfolded",
            stacklevel=2,
        )
        return teacher
    return freeze(folded)
