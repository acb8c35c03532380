""":func:`train`, and the driver that runs a plan's stages.

The driver holds the data as tensors on the training device and batches by indexing, so
a step does no per-sample Python work. It reports through callbacks and never touches a
database: the caller decides where progress goes and when to cancel.

Determinism: model init uses ``seed``; each epoch's shuffling and augmentation use a
generator seeded from ``(seed, stage, epoch)``; the global RNG (dropout) is saved in every
checkpoint and restored after the resumed stage's setup. A run resumed from any epoch's
checkpoint therefore ends with the same weights as an uninterrupted run on CPU.

With a teacher cache (:class:`kdcore.cache.CacheRequest`) the KD stage's batches are built
from the cache entry's view bank instead of random augmentations: each epoch shows each
sample its view ``(start + epoch - 1) mod K`` (no random draw), the same view the stored
teacher logits were computed on; shuffling still uses the epoch's generator. The entry is
found again on resume, so a resumed run replays the same views and logits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from kdcore.cache import CacheInfo, CacheRequest, dataset_sha256
from kdcore.contract import DistillConfig, Spec, StageName, StagePlan, plan_stages
from kdcore.data import Dataset, Normalizer, augment, batches
from kdcore.evaluate import predict, score
from kdcore.fold import fold_batchnorm
from kdcore.models import build_model
from kdcore.runtime import Runtime, in_memory_format, resolve_runtime
from kdcore.train.cached import CachedRun, check_teacher, from_cache
from kdcore.train.checkpoint import (
    Checkpoint,
    RunState,
    append_metrics,
    restore,
    save_checkpoint,
    start_or_resume,
)
from kdcore.train.stages import Batch, Context, Stage, start_stage
from kdcore.weights import RawInputProgram, is_frozen, is_program


@dataclass(frozen=True)
class Progress:
    """What the loop reports: every ``progress_every`` steps (``kind="step"``) and after
    each epoch's validation (``kind="epoch"``, with ``val_*`` metrics)."""

    kind: Literal["step", "epoch"]
    # A job's sub-runs report as "probe" (kdcore.tune) and "baseline" (the student alone).
    stage: StageName | Literal["probe", "baseline"]
    stage_index: int
    stages: int
    epoch: int  # 1-based, within the stage
    epochs: int
    step: int  # 1-based, within the epoch
    steps: int
    fraction: float  # of the whole run, 0..1
    metrics: dict[str, float]
    samples_per_s: float


class Canceled(Exception):
    """The cancel callback asked to stop; the last epoch's checkpoint is kept."""


class Diverged(Exception):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    def __init__(self, stage: str, epoch: int, step: int, value: float) -> None:
        super().__init__(
            f"training diverged in stage {stage!r}, epoch {epoch}, step {step} (loss {value}); "
            "lower the learning rate (or the hint stage's lr), or use fp32"
        )
        self.stage, self.epoch, self.step = stage, epoch, step


@dataclass
class TrainResult:
    student: nn.Module
    teacher: nn.Module | None  # as training called it: on normalized batches
    normalizer: Normalizer
    val_data: Dataset | None
    history: list[dict[str, Any]]
    stage_seconds: dict[str, float]
    best: dict[str, Any]
    exported: dict[str, Any]  # which epoch's weights the student holds, and why
    runtime: Runtime
    teacher_cache: CacheInfo = field(default_factory=CacheInfo)  # the KD stage's logits
    hint_cache: CacheInfo = field(default_factory=CacheInfo)  # FitNets stage 1's hint maps


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


def train(
    *,
    spec: Spec,
    config: DistillConfig,
    train_data: Dataset,
    val_data: Dataset | None = None,
    teacher: nn.Module | None = None,
    out_dir: Path,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    resume: bool = True,
    progress_every: int = 20,
    teacher_cache: CacheRequest | None = None,
) -> TrainResult:
    """Train a student by ``config.method`` and return it with its history.

    Args:
        spec: the student's architecture spec.
        config: the training configuration.
        train_data: training samples; ``val_split`` of it is held out when ``val_data`` is None.
        val_data: validation samples, scored after every epoch.
        teacher: the teacher, frozen by :func:`kdcore.weights.freeze` (required for ``kd``
            and ``fitnet``).
        out_dir: where ``checkpoint.pt`` and ``metrics.jsonl`` are written.
        on_progress: called with :class:`Progress` as training goes.
        should_cancel: polled between steps; returning True raises :class:`Canceled`.
        resume: continue from ``out_dir/checkpoint.pt`` when it exists.
        progress_every: steps between step reports.
        teacher_cache: read the teacher's logits from this cache (built on a miss) instead
            of running the teacher in the KD stage; ignored for ``scratch``.

    Raises:
        Canceled, Diverged, ValueError (bad layers or shapes, a teacher missing or not
        frozen).
    """
    if config.auto_fields:
        raise ValueError(
            f"{', '.join(config.auto_fields)} still 'auto': resolve the config first "
            "(kdcore.tune.resolve_auto; kdcore.pipeline.run does)"
        )
    if config.uses_teacher and teacher is None:
        raise ValueError(f"method {config.method!r} needs a teacher")
    if teacher is not None and not is_frozen(teacher):
        raise ValueError(
            "the teacher must be frozen (eval mode, no parameter requiring grad): "
            "pass it through kdcore.weights.freeze"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    runtime = resolve_runtime(config, images=train_data.x.ndim == 4)
    device = runtime.device
    split = val_data is None and config.val_split > 0
    data_sha256 = None
    if teacher_cache is not None and config.uses_teacher:  # the data before the split
        data_sha256 = teacher_cache.data_sha256 or dataset_sha256(train_data)

    if split:
        train_data, val_data = train_data.split(config.val_split, seed=config.seed)
    if val_data is not None and len(val_data) == 0:
        val_data = None
    if config.batch_size > len(train_data):
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the {len(train_data)} training "
            "samples; lower batch_size"
        )
    normalizer = Normalizer.fit(train_data)

    torch.manual_seed(config.seed)
    student = runtime.model(build_model(spec, train_data.input_shape, train_data.num_classes))
    if isinstance(teacher, RawInputProgram):  # it preprocesses raw samples itself
        teacher = teacher.fed_normalized(normalizer)
    ctx = Context(
        config=config,
        runtime=runtime,
        x=train_data.x.to(device),
        y=train_data.y.to(device),
        normalizer=normalizer,
        student=student,
        teacher=_place_teacher(teacher, runtime) if teacher is not None else None,
    )
    if ctx.teacher is not None:
        folded = fold_batchnorm(ctx.teacher)  # a copy, or the teacher when nothing folds
        ctx = replace(
            ctx, logit_teacher=ctx.teacher if folded is ctx.teacher else runtime.model(folded)
        )
    cached = CachedRun()
    if ctx.teacher is not None and teacher_cache is not None and data_sha256 is not None:
        cached = from_cache(ctx, train_data, teacher_cache, data_sha256=data_sha256, split=split)
        ctx = replace(
            ctx,
            teacher_outputs=cached.logits.to(device) if cached.logits else None,
            hint_outputs=cached.hints.to(device) if cached.hints else None,
        )
    if ctx.teacher is not None and cached.logits is None:
        check_teacher(ctx, train_data)

    state, saved = start_or_resume(out_dir, student, device, resume=resume)
    driver = _Driver(
        ctx=ctx,
        plan=plan_stages(config),
        state=state,
        spec=spec,
        data=train_data,
        val_data=val_data,
        out_dir=out_dir,
        on_progress=on_progress,
        should_cancel=should_cancel,
        progress_every=progress_every,
    )
    driver.run(saved)
    exported = _choose_export(config, state, student)

    student.eval()
    # Exports and safetensors want contiguous weights, and the report times both models as
    # a deployer gets them; channels-last was for training speed.
    in_memory_format(student, "contiguous")
    if ctx.teacher is not None and not is_program(ctx.teacher):
        in_memory_format(ctx.teacher, "contiguous")
    return TrainResult(
        student=student,
        teacher=ctx.teacher,
        normalizer=normalizer,
        val_data=val_data,
        history=state.history,
        stage_seconds=state.stage_seconds,
        best=state.best,
        exported=exported,
        runtime=runtime,
        teacher_cache=cached.logits_info,
        hint_cache=cached.hints_info,
    )


def _choose_export(config: DistillConfig, state: RunState, student: nn.Module) -> dict[str, Any]:
    """Load the weights to export into ``student`` and say which epoch they are from and
    why: with ``checkpoint: "best"``, the latest epoch within one standard error of the best
    validation accuracy (:meth:`RunState.keep_export`); else the last."""
    last = state.history[-1] if state.history else {}
    info: dict[str, Any] = {
        "stage": last.get("stage"),
        "epoch": last.get("epoch"),
        "val_accuracy": last.get("val_accuracy"),
        "epochs_run": last.get("epoch"),
        "stopped_early": state.stopped_early,
    }
    if config.checkpoint == "last":
        return {**info, "reason": 'checkpoint "last": the last epoch'}
    if state.export_weights is None:
        return {**info, "reason": "no validation data to choose by: the last epoch"}
    student.load_state_dict(state.export_weights)
    chosen, best = state.export, state.best
    if chosen["epoch"] == best["epoch"]:
        reason = (
            f"the best validation accuracy ({best['val_accuracy']:.4f}) of the "
            f"{last.get('epoch')} epochs of stage {best['stage']!r}"
        )
    else:
        reason = (
            f"the latest epoch within one standard error of the best validation accuracy "
            f"({best['val_accuracy']:.4f}, epoch {best['epoch']}): the validation data "
            "cannot tell them apart, and the later epoch is the more trained"
        )
    if state.stopped_early:
        reason += f"; stopped early after {config.patience} epochs without a better one"
    return {
        **info,
        "epoch": chosen["epoch"],
        "val_accuracy": chosen["val_accuracy"],
        "best_epoch": best["epoch"],
        "reason": reason,
    }


def _place_teacher(teacher: nn.Module, runtime: Runtime) -> nn.Module:
    """The teacher on the run's device; in channels-last too when it is a plain module (a
    compiled program keeps the layout it was traced with)."""
    if is_program(teacher):
        return teacher.to(runtime.device)
    return runtime.model(teacher)


@dataclass
class _Driver:
    """Runs the planned stages, and for every stage the same epoch loop: train, validate,
    record metrics, checkpoint, report."""

    ctx: Context
    plan: list[StagePlan]
    state: RunState
    spec: Spec
    data: Dataset  # the training samples (their shape and classes go into checkpoints)
    val_data: Dataset | None
    out_dir: Path
    on_progress: ProgressFn | None
    should_cancel: CancelFn | None
    progress_every: int
    _clock: float = field(default=0.0, init=False)  # when stage time was last counted

    def run(self, saved: Checkpoint | None) -> None:
        """Run the stages the state has not finished; ``saved``: the checkpoint resumed."""
        state = self.state
        for index, plan in enumerate(self.plan):
            if state.finished(index, plan.epochs):
                continue
            if index > state.stage_index:
                state.stage_index, state.epoch = index, 0
            with start_stage(plan, self.ctx) as stage:
                if saved is not None:
                    restore(saved, index, stage)
                    saved = None  # only the first stage run after a resume restores
                self._clock = time.perf_counter()
                for epoch in range(state.epoch + 1, plan.epochs + 1):
                    metrics, rate = self._train_epoch(stage, index, epoch)
                    metrics["lr"] = stage.lr
                    if stage.validates:
                        metrics.update(self._validate())
                    self._end_epoch(stage, index, epoch, metrics, rate)
                    if state.stopped_early:
                        break

    @property
    def _final(self) -> int:
        """The stage whose weights are exported: the last one."""
        return len(self.plan) - 1

    def _train_epoch(self, stage: Stage, index: int, epoch: int) -> tuple[dict[str, float], float]:
        """One pass over the data; returns the mean ``train_*`` losses and samples/s."""
        gen = torch.Generator().manual_seed(_epoch_seed(self.ctx.config.seed, index, epoch))
        sums: dict[str, float] = {}
        started, seen = time.perf_counter(), 0
        self.ctx.student.train()
        for step, idx in enumerate(self._batches(gen), start=1):
            if self.should_cancel is not None and self.should_cancel():
                raise Canceled(f"canceled in stage {stage.name!r}, epoch {epoch}")
            batch = self._batch(stage, idx, epoch, gen)
            with self.ctx.autocast():
                loss, parts = stage.loss(batch)
            if not torch.isfinite(loss):
                raise Diverged(stage.name, epoch, step, loss.item())
            stage.update(loss)
            seen += len(idx)
            for k, v in {"loss": loss.detach(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
            if self.on_progress is not None and step % self.progress_every == 0:
                rate = seen / (time.perf_counter() - started)
                means = {k: v / seen for k, v in sums.items()}
                self._report("step", index, epoch, step, means, rate)
        rate = seen / (time.perf_counter() - started)
        return {f"train_{k}": v / seen for k, v in sums.items()}, rate

    def _end_epoch(
        self, stage: Stage, index: int, epoch: int, metrics: dict[str, float], rate: float
    ) -> None:
        """Record the epoch: stage time, metrics row, checkpoint, progress report."""
        state = self.state
        state.epoch = epoch
        now = time.perf_counter()
        state.stage_seconds[stage.name] = (
            state.stage_seconds.get(stage.name, 0.0) + now - self._clock
        )
        self._clock = now
        row = {"stage": stage.name, "epoch": epoch, "samples_per_s": rate, **metrics}
        state.record(row)
        if index == self._final and "val_accuracy" in row:
            assert self.val_data is not None  # val_accuracy comes from it
            state.keep_export(row, self.ctx.student, len(self.val_data))
            patience = self.ctx.config.patience
            if patience is not None and state.epochs_since_best(stage.name, epoch) >= patience:
                state.stopped_early = epoch < self.plan[index].epochs
        append_metrics(self.out_dir, row)
        save_checkpoint(
            self.out_dir, spec=self.spec, data=self.data, ctx=self.ctx, state=state, stage=stage
        )
        self._report("epoch", index, epoch, self.ctx.steps_per_epoch, metrics, rate)

    def _batches(self, gen: torch.Generator) -> Iterator[torch.Tensor]:
        n, size = len(self.ctx.y), self.ctx.config.batch_size
        for idx in batches(n, size, shuffle=True, generator=gen):
            yield idx.to(self.ctx.device)

    def _batch(self, stage: Stage, idx: torch.Tensor, epoch: int, gen: torch.Generator) -> Batch:
        """The batch of samples ``idx``: from the stage's view bank when it trains on cached
        teacher outputs (the epoch's view of each sample), else randomly augmented."""
        if stage.cached is None:
            xb = self.ctx.runtime.batch(self._inputs(idx, gen))
            return Batch(idx=idx, x=xb, y=self.ctx.y[idx])
        bank = stage.cached.bank
        view = bank.choose(idx, epoch)  # (B,)
        xb = bank.apply(self.ctx.normalizer(self.ctx.x[idx]), idx, view)  # (B, ...) float32
        return Batch(idx=idx, x=self.ctx.runtime.batch(xb), y=self.ctx.y[idx], view=view)

    def _inputs(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        xb = self.ctx.normalizer(self.ctx.x[idx])  # (B, ...) float32
        cfg = self.ctx.config
        if cfg.augments and xb.dim() == 4:
            xb = augment(
                xb,
                crop_padding=cfg.crop_padding,
                crop="crop" in cfg.augment,
                flip="flip" in cfg.augment,
                cutout=cfg.cutout,
                generator=gen,
            )
        return xb

    def _validate(self) -> dict[str, float]:
        if self.val_data is None:
            return {}
        s = score(predict(self.ctx.student, self.val_data, self.ctx.normalizer), self.val_data.y)
        return {"val_accuracy": s.accuracy, "val_nll": s.nll}

    def _report(
        self,
        kind: Literal["step", "epoch"],
        index: int,
        epoch: int,
        step: int,
        metrics: dict[str, float],
        rate: float,
    ) -> None:
        if self.on_progress is None:
            return
        plan, steps = self.plan[index], self.ctx.steps_per_epoch
        done = len(self.state.history) - (1 if kind == "epoch" else 0)  # epochs before this
        total = sum(s.epochs for s in self.plan)
        self.on_progress(
            Progress(
                kind=kind,
                stage=plan.name,
                stage_index=index,
                stages=len(self.plan),
                epoch=epoch,
                epochs=plan.epochs,
                step=step,
                steps=steps,
                fraction=min(1.0, (done + step / steps) / total),
                metrics=metrics,
                samples_per_s=rate,
            )
        )


def _epoch_seed(seed: int, stage_index: int, epoch: int) -> int:
    return (seed * 1_000_003 + stage_index * 10_007 + epoch) % (2**63)
