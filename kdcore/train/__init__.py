"""The training loop for all three methods: ``scratch``, ``kd`` and ``fitnet`` (hint, then KD).

- :mod:`~kdcore.train.loop`: :func:`train`, and the driver that runs the stages of
  :func:`kdcore.contract.plan_stages` (resume, epochs, validation, checkpoints, metrics,
  progress, once for all stages);
- :mod:`~kdcore.train.stages`: one class per stage, owning its setup (what it trains, with
  which optimizer), its loss for a batch and its teardown;
- :mod:`~kdcore.train.checkpoint`: what a run leaves in its folder to resume from;
- :mod:`~kdcore.train.optim`: the optimizer and learning-rate schedule of a config.
"""

from kdcore.train.checkpoint import CHECKPOINT_NAME, METRICS_NAME
from kdcore.train.loop import (
    Canceled,
    CancelFn,
    Diverged,
    Progress,
    ProgressFn,
    TrainResult,
    train,
)

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "CancelFn",
    "Canceled",
    "Diverged",
    "Progress",
    "ProgressFn",
    "TrainResult",
    "train",
]
