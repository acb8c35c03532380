"""What a run leaves in its folder to resume from.

``checkpoint.pt`` is rewritten after every epoch; it carries the spec, config, data
description, normalizer, weights, optimizer and schedule, RNG state and history, so a job
can resume and export without a database, and loads with ``weights_only=True``.
``metrics.jsonl`` gets one row per epoch and is cut back to the checkpoint's history on
resume, so the two always agree.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.contract import Spec, epoch_rank
from kdcore.data import Dataset
from kdcore.files import atomic_write
from kdcore.train.stages import Context, Stage

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
FORMAT, VERSION = "kdcore-checkpoint", 1

Checkpoint = dict[str, Any]  # as saved by save_checkpoint, loaded weights-only


@dataclass
class RunState:
    """Where a run stands: what a checkpoint restores besides weights and optimizer."""

    stage_index: int = 0
    epoch: int = 0  # epochs completed in the current stage
    history: list[dict[str, Any]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # The final stage's best epoch by validation (accuracy, then lower NLL), for patience;
    # the epoch to export (see keep_export) and its weights.
    best: dict[str, Any] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)
    export_weights: dict[str, torch.Tensor] | None = None
    stopped_early: bool = False  # the final stage ran out of patience

    def finished(self, index: int, epochs: int) -> bool:
        """Whether stage ``index``, of ``epochs`` epochs, is done."""
        return index < self.stage_index or (
            index == self.stage_index and (self.epoch >= epochs or self.stopped_early)
        )

    def record(self, row: dict[str, Any]) -> None:
        """Add an epoch's metrics row."""
        self.history.append(row)

    def improves(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` (an epoch with ``val_accuracy``) beats the best epoch so far:
        higher accuracy, or the same accuracy with a lower validation NLL."""
        return not self.best or epoch_rank(row) > epoch_rank(self.best)

    def keep_export(self, row: dict[str, Any], student: nn.Module, val_samples: int) -> None:
        """Record an epoch of the final stage: it becomes the best if it beats it, and the
        epoch to export if its validation accuracy is within one standard error of the best
        so far (:func:`standard_error`). So the export is the *latest* epoch that the
        validation data cannot tell from the best: an earlier epoch is exported only when
        it was better by more than the noise of the validation set (a noisy validation set
        would otherwise pick a half-trained epoch that was lucky on it)."""
        fields: dict[str, Any] = {
            k: row[k] for k in ("stage", "epoch", "val_accuracy", "val_nll") if k in row
        }
        if self.improves(row):
            self.best = fields
        best = self.best["val_accuracy"]
        if row["val_accuracy"] >= best - standard_error(best, val_samples):
            self.export = fields
            self.export_weights = {
                k: v.detach().cpu().clone() for k, v in student.state_dict().items()
            }

    def epochs_since_best(self, stage: str, epoch: int) -> int:
        if self.best.get("stage") != stage:
            return epoch
        return epoch - int(self.best["epoch"])


def standard_error(accuracy: float, samples: int) -> float:
    """The standard error of an accuracy measured on ``samples`` samples (binomial)."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(samples, 1))


def start_or_resume(
    out_dir: Path, student: nn.Module, device: torch.device, *, resume: bool
) -> tuple[RunState, Checkpoint | None]:
    """The state to start from, and the checkpoint it came from.

    With ``resume`` and a checkpoint in ``out_dir``: its state, with its student weights
    loaded and ``metrics.jsonl`` cut back to its history. Otherwise a fresh state, and any
    old ``metrics.jsonl`` removed.
    """
    path, metrics = out_dir / CHECKPOINT_NAME, out_dir / METRICS_NAME
    if not (resume and path.exists()):
        metrics.unlink(missing_ok=True)
        return RunState(), None
    saved: Checkpoint = torch.load(path, map_location=device, weights_only=True)
    student.load_state_dict(saved["student"])
    state = RunState(
        stage_index=saved["stage_index"],
        epoch=saved["epoch"],
        history=list(saved["history"]),
        stage_seconds=dict(saved["stage_seconds"]),
        best=dict(saved["best"]),
        export=dict(saved.get("export", {})),
        export_weights=saved.get("export_student"),
        stopped_early=bool(saved.get("stopped_early", False)),
    )
    if metrics.exists():  # drop rows written after the checkpoint
        lines = metrics.read_text().splitlines()[: len(state.history)]
        metrics.write_text("".join(line + "\n" for line in lines))
    return state, saved


def restore(saved: Checkpoint, index: int, stage: Stage) -> None:
    """Bring the first stage run after a resume to where the checkpoint left off.

    Called after the stage's setup, which may draw random numbers (the regressor's init):
    the RNG is restored last, so the run continues on the stream it was saved with.
    """
    if saved["stage_index"] == index:
        stage.optimizer.load_state_dict(saved["optimizer"])
        stage.scheduler.load_state_dict(saved["scheduler"])
        if stage.regressor is not None and saved["regressor"] is not None:
            stage.regressor.load_state_dict(saved["regressor"])
    torch.set_rng_state(saved["rng"]["torch"].cpu())
    if torch.cuda.is_available() and saved["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(saved["rng"]["cuda"].cpu())


def save_checkpoint(
    out_dir: Path, *, spec: Spec, data: Dataset, ctx: Context, state: RunState, stage: Stage
) -> None:
    """Write ``checkpoint.pt`` for the epoch just finished (atomically)."""
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec.model_dump(mode="json"),
        "config": ctx.config.model_dump(mode="json"),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "classes": list(data.classes),
        "normalizer": ctx.normalizer.to_dict(),
        "stage_index": state.stage_index,
        "epoch": state.epoch,
        "student": ctx.student.state_dict(),
        "regressor": stage.regressor.state_dict() if stage.regressor is not None else None,
        "optimizer": stage.optimizer.state_dict(),
        "scheduler": stage.scheduler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        },
        "history": state.history,
        "stage_seconds": state.stage_seconds,
        "best": state.best,
        "export": state.export,
        "export_student": state.export_weights,
        "stopped_early": state.stopped_early,
    }
    with atomic_write(out_dir / CHECKPOINT_NAME) as tmp:
        torch.save(ckpt, tmp)


def append_metrics(out_dir: Path, row: dict[str, Any]) -> None:
    with (out_dir / METRICS_NAME).open("a") as f:
        f.write(json.dumps(row) + "\n")
