"""The training loop for all three methods: ``scratch``, ``kd`` and ``fitnet`` (hint, then KD).

The loop holds the data as tensors on the training device and batches by indexing, so a
step does no per-sample Python work. It reports through callbacks and never touches a
database: the caller decides where progress goes and when to cancel.

Determinism: model init uses ``seed``; each epoch's shuffling and augmentation use a
generator seeded from ``(seed, stage, epoch)``; the global RNG (dropout) is saved in every
checkpoint. A run resumed from any epoch's checkpoint therefore ends with the same weights
as an uninterrupted run on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from kdcore.config import DistillConfig
from kdcore.data import Dataset, Normalizer, augment, batches
from kdcore.evaluate import predict, score
from kdcore.hooks import FeatureTap
from kdcore.losses import hint_loss, kd_loss
from kdcore.models import build_model
from kdcore.regressor import build_regressor
from kdcore.specs import parse_arch

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
StageName = Literal["scratch", "hint", "kd"]


@dataclass(frozen=True)
class Progress:
    """What the loop reports: every ``progress_every`` steps (``kind="step"``) and after
    each epoch's validation (``kind="epoch"``, with ``val_*`` metrics)."""

    kind: Literal["step", "epoch"]
    stage: StageName
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
    normalizer: Normalizer
    val_data: Dataset | None
    history: list[dict[str, Any]]
    stage_seconds: dict[str, float]
    best: dict[str, Any]


@dataclass
class _Stage:
    name: StageName
    epochs: int
    lr: float | None  # None: the hint stage's default, set once the hint's shape is known


@dataclass
class _State:
    """Everything a checkpoint restores."""

    stage_index: int = 0
    epoch: int = 0  # epochs completed in the current stage
    history: list[dict[str, Any]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError('config asks for device "cuda" but no CUDA GPU is available')
    return torch.device(name)


def train(
    *,
    student_spec: Any,
    config: DistillConfig,
    train_data: Dataset,
    val_data: Dataset | None = None,
    teacher: nn.Module | None = None,
    out_dir: Path,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    resume: bool = True,
    progress_every: int = 20,
) -> TrainResult:
    """Train a student by ``config.method`` and return it with its history.

    Args:
        student_spec: architecture spec of the student (parsed or JSON dict).
        config: the training configuration.
        train_data: training samples; ``val_split`` of it is held out when ``val_data`` is None.
        val_data: validation samples, scored after every epoch.
        teacher: the frozen teacher (required for ``kd`` and ``fitnet``).
        out_dir: where ``checkpoint.pt`` and ``metrics.jsonl`` are written.
        on_progress: called with :class:`Progress` as training goes.
        should_cancel: polled between steps; returning True raises :class:`Canceled`.
        resume: continue from ``out_dir/checkpoint.pt`` when it exists.
        progress_every: steps between step reports.

    Raises:
        Canceled, Diverged, ValueError (bad layers or shapes).
    """
    spec = parse_arch(student_spec) if isinstance(student_spec, dict | str) else student_spec
    if config.uses_teacher and teacher is None:
        raise ValueError(f"method {config.method!r} needs a teacher")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)

    if val_data is None and config.val_split > 0:
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
    student = build_model(spec, train_data.input_shape, train_data.num_classes).to(device)
    if teacher is not None:
        teacher = teacher.to(device).eval().requires_grad_(False)
        _check_teacher(teacher, train_data, normalizer, device)

    stages = _plan(config)
    state = _State()
    checkpoint_path = out_dir / CHECKPOINT_NAME
    saved: dict[str, Any] | None = None
    if resume and checkpoint_path.exists():
        saved = torch.load(checkpoint_path, map_location=device, weights_only=True)
        student.load_state_dict(saved["student"])
        state = _State(
            stage_index=saved["stage_index"],
            epoch=saved["epoch"],
            history=list(saved["history"]),
            stage_seconds=dict(saved["stage_seconds"]),
            best=dict(saved["best"]),
        )
        _truncate_metrics(out_dir / METRICS_NAME, len(state.history))
    elif (out_dir / METRICS_NAME).exists():
        (out_dir / METRICS_NAME).unlink()

    x = train_data.x.to(device)
    y = train_data.y.to(device)
    total_epochs = sum(s.epochs for s in stages)
    loop = _Loop(
        config=config,
        device=device,
        x=x,
        y=y,
        normalizer=normalizer,
        student=student,
        teacher=teacher,
        val_data=val_data,
        on_progress=on_progress,
        should_cancel=should_cancel,
        progress_every=progress_every,
        total_epochs=total_epochs,
        n_stages=len(stages),
    )

    for index, stage in enumerate(stages):
        if index < state.stage_index or (
            index == state.stage_index and state.epoch >= stage.epochs
        ):
            continue
        if index > state.stage_index:
            state.stage_index, state.epoch = index, 0
        loop.run_stage(index, stage, state, out_dir, spec, train_data, saved)
        saved = None  # only the first stage run after a resume restores optimizer state

    student.eval()
    return TrainResult(
        student=student,
        normalizer=normalizer,
        val_data=val_data,
        history=state.history,
        stage_seconds=state.stage_seconds,
        best=state.best,
    )


def _plan(config: DistillConfig) -> list[_Stage]:
    if config.method == "fitnet":
        assert config.hint is not None
        return [
            _Stage("hint", config.hint.epochs, config.hint.lr),
            _Stage("kd", config.epochs, config.lr),
        ]
    return [_Stage("kd" if config.method == "kd" else "scratch", config.epochs, config.lr)]


def _check_teacher(
    teacher: nn.Module, data: Dataset, normalizer: Normalizer, device: torch.device
) -> None:
    with torch.no_grad():
        out = teacher(normalizer(data.x[:2].to(device)))
    if not isinstance(out, torch.Tensor) or out.shape != (2, data.num_classes):
        got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"the teacher outputs {got} per sample, but the data has {data.num_classes} classes; "
            "use a teacher trained on these classes"
        )


@dataclass
class _Loop:
    config: DistillConfig
    device: torch.device
    x: torch.Tensor  # (N, ...) raw dtype, on device
    y: torch.Tensor  # (N,)
    normalizer: Normalizer
    student: nn.Module
    teacher: nn.Module | None
    val_data: Dataset | None
    on_progress: ProgressFn | None
    should_cancel: CancelFn | None
    progress_every: int
    total_epochs: int
    n_stages: int

    def run_stage(
        self,
        index: int,
        stage: _Stage,
        state: _State,
        out_dir: Path,
        spec: Any,
        data: Dataset,
        saved: dict[str, Any] | None,
    ) -> None:
        cfg = self.config
        regressor: nn.Module | None = None
        taps: tuple[FeatureTap, FeatureTap] | None = None
        if stage.name == "hint":
            assert cfg.hint is not None
            assert self.teacher is not None
            taps = (
                FeatureTap(self.student, cfg.hint.student_layer, stop=True),
                FeatureTap(self.teacher, cfg.hint.teacher_layer, stop=True),
            )
            regressor, hint_shape = self._regressor(taps)
            regressor.to(self.device)
            params = self._guided_params(taps[0]) + list(regressor.parameters())
        else:
            params = list(self.student.parameters())
        lr = stage.lr
        if lr is None:
            # The hint loss sums over every position of the hint map, so its gradients are
            # about H·W times those of a per-sample loss; scale the step to match.
            lr = cfg.lr / math.prod(hint_shape[1:])
        optimizer = _optimizer(cfg, params, lr)
        steps_per_epoch = math.ceil(len(self.y) / cfg.batch_size)
        scheduler = _scheduler(cfg, optimizer, stage.epochs * steps_per_epoch)
        if saved is not None:
            if saved["stage_index"] == index:
                optimizer.load_state_dict(saved["optimizer"])
                scheduler.load_state_dict(saved["scheduler"])
                if regressor is not None and saved["regressor"] is not None:
                    regressor.load_state_dict(saved["regressor"])
            # Restored last, after anything above that draws random numbers (regressor init).
            torch.set_rng_state(saved["rng"]["torch"].cpu())
            if torch.cuda.is_available() and saved["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(saved["rng"]["cuda"].cpu())

        teacher_logits = None
        if stage.name == "kd" and cfg.augment == "none":
            # Without augmentation each sample's teacher output never changes: compute it once.
            assert self.teacher is not None
            teacher_logits = self._teacher_logits()

        scaler = torch.amp.GradScaler(
            enabled=cfg.precision == "fp16" and self.device.type == "cuda"
        )
        started = time.perf_counter()
        try:
            for epoch in range(state.epoch + 1, stage.epochs + 1):
                gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, index, epoch))
                sums: dict[str, float] = {}
                t_epoch, seen = time.perf_counter(), 0
                self.student.train()
                for step, idx in enumerate(self._batches(gen), start=1):
                    if self.should_cancel is not None and self.should_cancel():
                        raise Canceled(f"canceled in stage {stage.name!r}, epoch {epoch}")
                    loss, parts = self._step(stage.name, idx, gen, taps, regressor, teacher_logits)
                    if not torch.isfinite(loss):
                        raise Diverged(stage.name, epoch, step, loss.item())
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    seen += len(idx)
                    for k, v in {"loss": loss.detach(), **parts}.items():
                        sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
                    if self.on_progress and step % self.progress_every == 0:
                        rate = seen / (time.perf_counter() - t_epoch)
                        self._report(
                            "step",
                            stage,
                            index,
                            epoch,
                            step,
                            steps_per_epoch,
                            {k: v / seen for k, v in sums.items()},
                            rate,
                            state,
                        )
                rate = seen / (time.perf_counter() - t_epoch)
                metrics = {f"train_{k}": v / seen for k, v in sums.items()}
                metrics["lr"] = optimizer.param_groups[0]["lr"]
                if stage.name != "hint":
                    metrics.update(self._validate())
                state.epoch = epoch
                state.stage_seconds[stage.name] = (
                    state.stage_seconds.get(stage.name, 0.0) + time.perf_counter() - started
                )
                started = time.perf_counter()
                row = {"stage": stage.name, "epoch": epoch, "samples_per_s": rate, **metrics}
                state.history.append(row)
                _update_best(state, row)
                _append_jsonl(out_dir / METRICS_NAME, row)
                _save_checkpoint(
                    out_dir / CHECKPOINT_NAME,
                    self,
                    spec,
                    data,
                    state,
                    optimizer,
                    scheduler,
                    regressor,
                )
                self._report(
                    "epoch",
                    stage,
                    index,
                    epoch,
                    steps_per_epoch,
                    steps_per_epoch,
                    metrics,
                    rate,
                    state,
                )
        finally:
            if taps is not None:
                for tap in taps:
                    tap.close()

    # -- pieces of a step ---------------------------------------------------------------

    def _batches(self, gen: torch.Generator) -> Iterator[torch.Tensor]:
        for idx in batches(len(self.y), self.config.batch_size, shuffle=True, generator=gen):
            yield idx.to(self.device)

    def _inputs(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        xb = self.normalizer(self.x[idx])  # (B, ...) float32
        aug = self.config.augment
        if aug != "none" and xb.dim() == 4:
            xb = augment(
                xb,
                crop_padding=self.config.crop_padding,
                crop="crop" in aug,
                flip="flip" in aug,
                generator=gen,
            )
        return xb

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        p = self.config.precision
        if p == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if p == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _step(
        self,
        stage: StageName,
        idx: torch.Tensor,
        gen: torch.Generator,
        taps: tuple[FeatureTap, FeatureTap] | None,
        regressor: nn.Module | None,
        teacher_logits: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        xb, yb = self._inputs(idx, gen), self.y[idx]
        cfg = self.config
        with self._autocast():
            if stage == "hint":
                assert taps is not None
                assert regressor is not None
                with torch.no_grad():
                    _, hint = taps[1].run(xb)  # (B, O_h, N_h, N_h)
                _, guided = taps[0].run(xb)  # (B, O_g, N_g, N_g)
                loss = hint_loss(hint, regressor(guided))
                return loss, {"hint": loss.detach()}
            if stage == "scratch":
                logits = self.student(xb)  # (B, K)
                loss = nn.functional.cross_entropy(logits.float(), yb)
                return loss, {"ce": loss.detach()}
            if teacher_logits is not None:
                t_logits = teacher_logits[idx]
            else:
                # Teacher first: its activations are freed before the student's forward saves
                # its own for backward, so the two never compete for cache and memory.
                assert self.teacher is not None
                with torch.no_grad():
                    t_logits = self.teacher(xb)  # (B, K)
            logits = self.student(xb)  # (B, K)
            return kd_loss(logits, t_logits, yb, temperature=cfg.temperature, alpha=cfg.alpha)

    def _teacher_logits(self) -> torch.Tensor:
        assert self.teacher is not None
        bs = max(self.config.batch_size, 256)
        out = []
        with torch.no_grad(), self._autocast():
            for i in range(0, len(self.y), bs):
                out.append(self.teacher(self.normalizer(self.x[i : i + bs])).float())
        return torch.cat(out)  # (N, K)

    def _regressor(self, taps: tuple[FeatureTap, FeatureTap]) -> tuple[nn.Module, tuple[int, ...]]:
        """The regressor for these layers, and the hint's per-sample shape."""
        probe = self.normalizer(self.x[:2])
        with torch.no_grad(), _eval(self.student), _eval(self.teacher):
            _, guided = taps[0].run(probe)
            _, hint = taps[1].run(probe)
        hint_shape = tuple(hint.shape[1:])
        return build_regressor(tuple(guided.shape[1:]), hint_shape), hint_shape

    def _guided_params(self, tap: FeatureTap) -> list[nn.Parameter]:
        """The student's parameters up to the guided layer: those the guided output depends on.

        Found by one backward pass in eval mode (no dropout draw, no BatchNorm update), so
        the probe changes neither the RNG stream nor the model.
        """
        self.student.zero_grad(set_to_none=True)
        with _eval(self.student):
            _, guided = tap.run(self.normalizer(self.x[:2]))
            guided.float().sum().backward()
        params = [p for p in self.student.parameters() if p.grad is not None]
        self.student.zero_grad(set_to_none=True)
        if not params:
            raise ValueError(f"guided layer {tap.path!r} has no trainable layer below it")
        return params

    def _validate(self) -> dict[str, float]:
        if self.val_data is None:
            return {}
        s = score(predict(self.student, self.val_data, self.normalizer), self.val_data.y)
        return {"val_accuracy": s.accuracy, "val_nll": s.nll}

    def _report(
        self,
        kind: Literal["step", "epoch"],
        stage: _Stage,
        index: int,
        epoch: int,
        step: int,
        steps: int,
        metrics: dict[str, float],
        rate: float,
        state: _State,
    ) -> None:
        if self.on_progress is None:
            return
        done = len(state.history) - (1 if kind == "epoch" else 0)  # epochs before this one
        fraction = min(1.0, (done + step / steps) / self.total_epochs)
        self.on_progress(
            Progress(
                kind=kind,
                stage=stage.name,
                stage_index=index,
                stages=self.n_stages,
                epoch=epoch,
                epochs=stage.epochs,
                step=step,
                steps=steps,
                fraction=fraction,
                metrics=metrics,
                samples_per_s=rate,
            )
        )


@contextlib.contextmanager
def _eval(model: nn.Module | None) -> Iterator[None]:
    if model is None:
        yield
        return
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _optimizer(cfg: DistillConfig, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    match cfg.optimizer:
        case "sgd":
            return torch.optim.SGD(
                params,
                lr=lr,
                momentum=cfg.momentum,
                nesterov=cfg.nesterov,
                weight_decay=cfg.weight_decay,
            )
        case "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
        case "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        case "rmsprop":
            return torch.optim.RMSprop(
                params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")  # pragma: no cover


def _scheduler(
    cfg: DistillConfig, opt: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch, so short runs get a smooth schedule too."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    if cfg.schedule == "multistep":
        milestones = sorted({max(1, round(m * total_steps)) for m in cfg.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)


def _epoch_seed(seed: int, stage_index: int, epoch: int) -> int:
    return (seed * 1_000_003 + stage_index * 10_007 + epoch) % (2**63)


def _update_best(state: _State, row: dict[str, Any]) -> None:
    acc = row.get("val_accuracy")
    if acc is not None and acc > state.best.get("val_accuracy", -1.0):
        state.best = {"val_accuracy": acc, "stage": row["stage"], "epoch": row["epoch"]}


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _truncate_metrics(path: Path, rows: int) -> None:
    """Drop metric rows written after the checkpoint we resume from."""
    if path.exists():
        lines = path.read_text().splitlines()[:rows]
        path.write_text("".join(line + "\n" for line in lines))


def _save_checkpoint(
    path: Path,
    loop: _Loop,
    spec: Any,
    data: Dataset,
    state: _State,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    regressor: nn.Module | None,
) -> None:
    """Everything needed to resume or export without a database; loadable weights-only."""
    ckpt = {
        "format": "kdcore-checkpoint",
        "version": 1,
        "spec": spec.model_dump(mode="json"),
        "config": loop.config.model_dump(mode="json"),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "classes": list(data.classes),
        "normalizer": loop.normalizer.to_dict(),
        "stage_index": state.stage_index,
        "epoch": state.epoch,
        "student": loop.student.state_dict(),
        "regressor": regressor.state_dict() if regressor is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        },
        "history": state.history,
        "stage_seconds": state.stage_seconds,
        "best": state.best,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
