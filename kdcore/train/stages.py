"""The stages of a run, one class each: what it trains, how, and its loss for a batch.

A stage is set up when it is built (the parameters it trains, their optimizer, learning
rate and schedule, and whatever its loss needs: the FitNets regressor and feature taps,
the teacher's logits), gives the loss for each batch (:meth:`Stage.loss`), takes the
optimizer step (:meth:`Stage.update`), and is closed when it ends. The driver in
:mod:`kdcore.train.loop` runs the stages of :func:`kdcore.contract.plan_stages` and does
everything else (epochs, validation, checkpoints, metrics, progress) once for all of them.

Adding a stage is one class here and one entry in :data:`STAGES`.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar

import torch
from torch import nn

from kdcore.cache import TeacherOutputs
from kdcore.contract import DistillConfig, StageName, StagePlan
from kdcore.data import Normalizer
from kdcore.fold import hint_source
from kdcore.hooks import FeatureTap
from kdcore.losses import hint_loss, kd_loss
from kdcore.regressor import build_regressor
from kdcore.runtime import Runtime
from kdcore.train.optim import build_optimizer, build_scheduler

Loss = tuple[torch.Tensor, dict[str, torch.Tensor]]  # the loss, and its parts for the log


@dataclass(frozen=True)
class Context:
    """What every stage works with: the config, the two models and the data on device."""

    config: DistillConfig
    runtime: Runtime  # the resolved device, precision and memory format
    x: torch.Tensor  # (N, ...) raw dtype, on device
    y: torch.Tensor  # (N,)
    normalizer: Normalizer
    student: nn.Module
    teacher: nn.Module | None  # frozen; present for "kd" and "fitnet"; as given (hints)
    # The teacher for logits: BatchNorm folded in (kdcore.fold), else the teacher itself.
    logit_teacher: nn.Module | None = None
    # From the teacher cache, on device: the teacher's logits, and FitNets' hint maps, per
    # sample and view (None: that stage runs the teacher).
    teacher_outputs: TeacherOutputs | None = None
    hint_outputs: TeacherOutputs | None = None

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.y) / self.config.batch_size)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision as the runtime resolved it (nothing for fp32)."""
        return self.runtime.autocast()

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """Samples ``idx`` normalized, in the runtime's memory format: ``(B, ...)`` float32."""
        return self.runtime.batch(self.normalizer(self.x[idx]))

    def probe(self) -> torch.Tensor:
        """Two normalized samples, to find shapes and dependencies by running the models."""
        return self.runtime.batch(self.normalizer(self.x[:2]))  # (2, ...) float32


@dataclass(frozen=True)
class Batch:
    idx: torch.Tensor  # (B,) indices of the samples, on device
    x: torch.Tensor  # (B, ...) normalized, augmented inputs
    y: torch.Tensor  # (B,) labels
    view: torch.Tensor | None = None  # (B,) which view of its sample each input is (bank)


class Stage(ABC):
    """One stage: built (set up) when it starts, closed (torn down) when it ends."""

    name: ClassVar[StageName]
    validates: ClassVar[bool] = True  # score the student on validation data after each epoch
    regressor: nn.Module | None = None  # trained along with the student; checkpointed
    # The stage trains on these outputs' view bank: the driver builds each batch from the
    # epoch's views (Batch.view) instead of drawing random augmentations.
    cached: TeacherOutputs | None = None

    def __init__(
        self,
        plan: StagePlan,
        ctx: Context,
        params: Iterable[nn.Parameter],
        lr: float,
        *,
        cleanup: contextlib.ExitStack | None = None,
    ) -> None:
        """Build the optimizer and schedule for ``params``; ``cleanup`` undoes the rest of
        the subclass's setup (such as hooks on the models) when the stage closes."""
        self.plan = plan
        self.ctx = ctx
        self._cleanup = cleanup or contextlib.ExitStack()
        self.optimizer = build_optimizer(ctx.config, params, lr)
        self.scheduler = build_scheduler(
            ctx.config, self.optimizer, plan.epochs * ctx.steps_per_epoch
        )
        self._scaler = torch.amp.GradScaler(
            enabled=ctx.runtime.precision == "fp16" and ctx.device.type == "cuda"
        )

    @abstractmethod
    def loss(self, batch: Batch) -> Loss:
        """The loss for one batch (run under the context's autocast)."""

    def update(self, loss: torch.Tensor) -> None:
        """One optimizer step on ``loss``, and one step of the learning-rate schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        self._scaler.scale(loss).backward()
        self._scaler.step(self.optimizer)
        self._scaler.update()
        self.scheduler.step()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def close(self) -> None:
        """Undo what the setup did to the models (hooks)."""
        self._cleanup.close()

    def __enter__(self) -> Stage:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _main_lr(plan: StagePlan) -> float:
    assert plan.lr is not None, "only the hint stage's lr defaults from the hint's shape"
    return plan.lr


class ScratchStage(Stage):
    """Labels only: cross-entropy on the whole student."""

    name = "scratch"

    def __init__(self, plan: StagePlan, ctx: Context) -> None:
        super().__init__(plan, ctx, ctx.student.parameters(), _main_lr(plan))

    def loss(self, batch: Batch) -> Loss:
        logits = self.ctx.student(batch.x)  # (B, K)
        loss = nn.functional.cross_entropy(logits.float(), batch.y)
        return loss, {"ce": loss.detach()}


class KdStage(Stage):
    """Knowledge distillation (Hinton et al. 2015) on the whole student: see :func:`kd_loss`.

    With the teacher cache (``ctx.teacher_outputs``) the teacher's logits for each sample's
    view come from the cache entry and the teacher never runs.
    """

    name = "kd"

    def __init__(self, plan: StagePlan, ctx: Context) -> None:
        assert ctx.logit_teacher is not None, "train() refuses kd without a teacher"
        self.teacher = ctx.logit_teacher
        super().__init__(plan, ctx, ctx.student.parameters(), _main_lr(plan))
        self.cached = ctx.teacher_outputs
        # Without augmentation each sample's teacher output never changes: compute it once.
        # (The frozen teacher draws no random numbers, so this may run before a resume
        # restores the RNG.)
        self._logits = None
        if self.cached is None and not ctx.config.augments:
            self._logits = self._teacher_logits()

    def loss(self, batch: Batch) -> Loss:
        if self.cached is not None:
            assert batch.view is not None, "the driver builds cached stages' batches from views"
            t_logits = self.cached.lookup(batch.idx, batch.view)  # (B, K)
        elif self._logits is not None:
            t_logits = self._logits[batch.idx]
        else:
            # Teacher first: its activations are freed before the student's forward saves
            # its own for backward, so the two never compete for cache and memory.
            with torch.no_grad():
                t_logits = self.teacher(batch.x)  # (B, K)
        logits = self.ctx.student(batch.x)  # (B, K)
        temperature, alpha = self.ctx.config.kd_weights()
        return kd_loss(logits, t_logits, batch.y, temperature=temperature, alpha=alpha)

    def _teacher_logits(self) -> torch.Tensor:
        ctx = self.ctx
        bs = max(ctx.config.batch_size, 256)
        out = []
        with torch.no_grad(), ctx.autocast():
            for i in range(0, len(ctx.y), bs):
                idx = torch.arange(i, min(i + bs, len(ctx.y)), device=ctx.device)
                out.append(self.teacher(ctx.inputs(idx)).float())
        return torch.cat(out)  # (N, K)


class HintStage(Stage):
    """FitNets stage 1 (Romero et al. 2015): the student up to its guided layer, through a
    regressor, learns to predict the teacher's hint layer (:func:`hint_loss`).

    The taps end both forward passes at those layers, so the layers above the guided one
    neither run nor train. The regressor exists during this stage only.
    """

    name = "hint"
    validates = False  # the student's head is not trained yet: its accuracy means nothing

    def __init__(self, plan: StagePlan, ctx: Context) -> None:
        hint = ctx.config.hint
        assert hint is not None, "plan_stages plans a hint stage for fitnet only"
        assert ctx.teacher is not None, "train() refuses fitnet without a teacher"
        self.cached = ctx.hint_outputs
        with contextlib.ExitStack() as taps:
            self._guided = taps.enter_context(
                FeatureTap(ctx.student, hint.student_layer, stop=True)
            )
            self._hint: FeatureTap | None = None
            if self.cached is None:
                # The folded teacher where it computes the hint layer as the teacher does.
                assert ctx.logit_teacher is not None
                source = hint_source(ctx.teacher, ctx.logit_teacher, hint.teacher_layer)
                self._hint = taps.enter_context(FeatureTap(source, hint.teacher_layer, stop=True))
            self.regressor, hint_shape = self._build_regressor(ctx)  # draws its initial weights
            ctx.runtime.model(self.regressor)
            params = self._guided_params(ctx) + list(self.regressor.parameters())
            lr = plan.lr
            if lr is None:
                # The hint loss sums over every position of the hint map, so its gradients
                # are about H·W times those of a per-sample loss; scale the step to match.
                lr = ctx.config.lr / math.prod(hint_shape[1:])
            # From here on the taps stay registered until the stage closes.
            super().__init__(plan, ctx, params, lr, cleanup=taps.pop_all())

    def loss(self, batch: Batch) -> Loss:
        assert self.regressor is not None
        if self.cached is not None:
            assert batch.view is not None, "the driver builds cached stages' batches from views"
            hint = self.cached.lookup(batch.idx, batch.view)  # (B, O_h, N_h, N_h)
        else:
            assert self._hint is not None
            with torch.no_grad():
                _, hint = self._hint.run(batch.x)  # (B, O_h, N_h, N_h)
        _, guided = self._guided.run(batch.x)  # (B, O_g, N_g, N_g)
        loss = hint_loss(hint, self.regressor(guided))
        return loss, {"hint": loss.detach()}

    def _build_regressor(self, ctx: Context) -> tuple[nn.Module, tuple[int, ...]]:
        """The regressor for these layers, and the hint's per-sample shape."""
        with torch.no_grad(), _eval(ctx.student):  # the teacher is in eval mode already
            _, guided = self._guided.run(ctx.probe())
            if self.cached is not None:
                hint_shape = tuple(self.cached.values.shape[2:])
            else:
                assert self._hint is not None
                hint_shape = tuple(self._hint.run(ctx.probe())[1].shape[1:])
        return build_regressor(tuple(guided.shape[1:]), hint_shape), hint_shape

    def _guided_params(self, ctx: Context) -> list[nn.Parameter]:
        """The student's parameters up to the guided layer: those the guided output depends on.

        Found by one backward pass in eval mode (no dropout draw, no BatchNorm update), so
        the probe changes neither the RNG stream nor the model.
        """
        student = ctx.student
        student.zero_grad(set_to_none=True)
        with _eval(student):
            _, guided = self._guided.run(ctx.probe())
            guided.float().sum().backward()
        params = [p for p in student.parameters() if p.grad is not None]
        student.zero_grad(set_to_none=True)
        if not params:
            raise ValueError(f"guided layer {self._guided.path!r} has no trainable layer below it")
        return params


STAGES: dict[StageName, Callable[[StagePlan, Context], Stage]] = {
    "scratch": ScratchStage,
    "kd": KdStage,
    "hint": HintStage,
}


def start_stage(plan: StagePlan, ctx: Context) -> Stage:
    """Set up the stage ``plan`` names; use it as a context manager to tear it down."""
    return STAGES[plan.name](plan, ctx)


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)
