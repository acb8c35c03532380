"""Training configuration: one JSON object for every method.

Fields and defaults (all optional but ``method``):

========================  ===============  ==================================================
field                     default          meaning
========================  ===============  ==================================================
method                    (required)       ``scratch`` (labels only), ``kd`` or ``fitnet``
epochs                    10               epochs of the main stage (KD for ``fitnet``)
batch_size                128
optimizer                 ``sgd``          ``sgd``, ``adam``, ``adamw``, ``rmsprop``
lr                        0.05
momentum                  0.9              SGD and RMSprop
nesterov                  false            SGD
weight_decay              5e-4
schedule                  ``cosine``       ``cosine``, ``multistep``, ``constant``
milestones                [0.5, 0.75]      ``multistep``: fractions of the stage's length,
                                           counted in optimizer steps (one per batch)
gamma                     0.1              ``multistep``: factor at each milestone
temperature               4.0              KD temperature T (> 0), or ``"auto"``: chosen on
                                           the validation split by short probe runs
                                           (:mod:`kdcore.tune`)
alpha                     0.1              weight of the hard-label loss; 1 − alpha on KD;
                                           or ``"auto"`` (as temperature)
hint                      ``"auto"``       ``fitnet`` only, see :class:`HintConfig`; ``"auto"``
                                           (the default): layers chosen by
                                           :func:`kdcore.contract.choose_hint`
checkpoint                ``best``         ``best``: export the epoch with the best validation
                                           accuracy; ``last``: the last epoch
patience                  null             stop the main stage after this many epochs
                                           without a better validation accuracy
baseline                  false            also train the student alone (method ``scratch``,
                                           same data, budget and seed) and report the gain
augment                   ``none``         ``none``, ``flip``, ``crop``, ``crop_flip``
crop_padding              4                zero padding for the random crop
cutout                    0                side of a square set to zero at a random centre
                                           of each training image (DeVries & Taylor 2017;
                                           0: off; their CIFAR-10 value is 16)
teacher_views             16               with a teacher cache and augmentation: views per
                                           sample whose teacher logits are stored (a run
                                           uses ``min(teacher_views, epochs)``), see below
precision                 ``auto``         ``auto``, ``fp32``, ``bf16``, ``fp16`` (autocast);
                                           ``auto``: bf16 where the device computes it
                                           natively, see :mod:`kdcore.train.runtime`
memory_format             ``auto``         ``auto`` (channels-last for images),
                                           ``channels_last``, ``contiguous``
device                    ``auto``         ``auto`` (CUDA when present), ``cpu``, ``cuda``
val_split                 0.1              fraction of training data held out for validation
                                           when no validation set is given (0: none)
seed                      0
========================  ===============  ==================================================

Every number has a finite range (the fields' ``Field`` bounds, stated in the JSON Schema;
docs/specs.md, "Bounds"), and ``NaN`` or infinite values are refused.

``teacher_views`` matters only when a run uses a teacher cache (``kdserve distill
--cache-dir``, or a service job with ``KDSERVE_TEACHER_CACHE`` on, the default), a teacher,
and augmentation; without augmentation the cache holds one view,
the sample itself. Each sample gets ``K`` fixed views (crop offsets, flip), drawn from
``seed``; each epoch shows one of them, cycling, so teacher and student see the same pixels
(:mod:`kdcore.data.views`). The default 16: the entry costs ``N·K·classes·2`` bytes (CIFAR-10
with 45,000 training samples: 14 MB; 100 classes: 144 MB), building it runs the teacher
``K`` times over the data (no more than the in-loop teacher in a run of ``K`` epochs), and
with typical 30–200 epoch schedules each view is seen 2–12 times. FKD (Shen & Xing 2022)
stores a few hundred crops per image for much longer schedules and richer augmentation;
for pad-and-crop plus flip on 32×32 images there are only ``(2p+1)²·2`` = 162 distinct views
(p = 4) to begin with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, model_validator

from kdcore.contract.bounds import MAX_PATH_LENGTH
from kdcore.contract.errors import parse_json_model

StageName = Literal["scratch", "hint", "kd"]
AUTO = "auto"
Auto = Literal["auto"]


def _number_or_auto(low: float, high: float, *, open_low: bool) -> tuple[Any, Any]:
    """A bounded number or ``"auto"``, checked as one type: one error that names both
    forms, where a plain union would report each member's failure separately."""
    op = ">" if open_low else ">="

    def check(value: Any) -> float | str:
        if value == AUTO:
            return AUTO
        number = isinstance(value, int | float) and not isinstance(value, bool)
        # Compared as given: a huge int never goes through float() (OverflowError), NaN
        # fails every comparison.
        if not (number and (value > low if open_low else value >= low) and value <= high):
            raise ValueError(f'must be a number {op} {low:g} and <= {high:g}, or "auto"')
        return float(value)

    bound = "exclusiveMinimum" if open_low else "minimum"
    schema = {"anyOf": [{"type": "number", bound: low, "maximum": high}, {"const": AUTO}]}
    return PlainValidator(check), WithJsonSchema(schema)


# The largest teacher-cache entry a run uses: it holds the entry in memory on the training
# device, so this is a memory budget. Logits (N·K·C·2 bytes, float16) over it are stored as
# their top-k instead (kdcore.cache.entry); FitNets hint maps (N·K·hint size·2 bytes) over it
# are not cached (stage 1 runs the teacher). 2 GiB: CIFAR-100's dense logits at 16 views
# take 144 MB; a CIFAR-sized hint of 32×16×16 over 45,000 samples is 737 MB per view (up to
# 2 hint epochs fit); MNIST-sized hints fit for far more. The engine's default and the
# service setting's (KDSERVE_TEACHER_CACHE_MAX_ENTRY_BYTES).
CACHE_ENTRY_MAX_BYTES = 2 << 30


class HintConfig(BaseModel):
    """FitNets stage 1: which layers meet, and how long the hint stage runs.

    ``teacher_layer`` is the hint, ``student_layer`` the guided layer; both are dotted module
    paths as ``kdserve inspect`` prints them, or both ``"auto"`` (the default; ``"hint":
    "auto"`` is short for ``{}``): chosen from the two models' layer shapes by
    :func:`kdcore.contract.choose_hint` before training.

    ``lr`` defaults to the main ``lr`` divided by the hint map's spatial positions ``H·W``
    (1 for vector hints): the hint loss sums over every position, so its gradients are that
    much larger than a per-sample loss's, and the main stage's step size kills the student's
    ReLUs (seen on the digits demo with lr 0.01 on an 8×8 hint; 1e-3 trains well).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    teacher_layer: str = Field(default=AUTO, min_length=1, max_length=MAX_PATH_LENGTH)
    student_layer: str = Field(default=AUTO, min_length=1, max_length=MAX_PATH_LENGTH)
    epochs: int = Field(default=5, gt=0, le=10_000)
    lr: float | None = Field(default=None, gt=0, le=10)

    @model_validator(mode="after")
    def _both_or_neither_auto(self) -> HintConfig:
        if (self.teacher_layer == AUTO) != (self.student_layer == AUTO):
            raise ValueError(
                'teacher_layer and student_layer are both "auto" or both layer paths; '
                "give both paths, or neither to have them chosen"
            )
        return self

    @property
    def auto(self) -> bool:
        """Whether the layers are still to be chosen (:func:`kdcore.contract.choose_hint`)."""
        return self.teacher_layer == AUTO


class DistillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    method: Literal["scratch", "kd", "fitnet"]
    epochs: int = Field(default=10, gt=0, le=10_000)
    batch_size: int = Field(default=128, gt=0, le=65_536)
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    lr: float = Field(default=0.05, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=5e-4, ge=0, le=1)
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=lambda: [0.5, 0.75],
        max_length=100,
        description="multistep: fractions of the stage's length (its optimizer steps)",
    )
    gamma: float = Field(default=0.1, gt=0, le=1)
    temperature: Annotated[float | Auto, *_number_or_auto(0, 1000, open_low=True)] = 4.0
    alpha: Annotated[float | Auto, *_number_or_auto(0, 1, open_low=False)] = 0.1
    hint: HintConfig | None = Field(
        default=None,
        description='fitnet only: the layer pair; "auto" (or left out) is short for {}: '
        "both layers chosen from the layer shapes",
    )
    checkpoint: Literal["best", "last"] = "best"
    patience: int | None = Field(default=None, gt=0, le=10_000)
    baseline: bool = False
    augment: Literal["none", "flip", "crop", "crop_flip"] = "none"
    crop_padding: int = Field(default=4, ge=0, le=64)
    cutout: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="side of a square set to zero at a random centre of each training image "
        "(cutout, DeVries & Taylor 2017); 0: off",
    )
    teacher_views: int = Field(default=16, ge=1, le=1024)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    val_split: float = Field(default=0.1, ge=0, lt=1)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)  # numpy's seeds are 32-bit

    @property
    def augments(self) -> bool:
        """Whether training images are augmented at all (crop, flip or cutout)."""
        return self.augment != "none" or self.cutout > 0

    @model_validator(mode="before")
    @classmethod
    def _hint_auto(cls, data: Any) -> Any:
        """``"hint": "auto"``, or no hint for ``fitnet``: the layers are chosen (``{}``)."""
        if isinstance(data, dict):
            if data.get("hint") == AUTO or (
                data.get("method") == "fitnet" and data.get("hint") is None
            ):
                return {**data, "hint": {}}
        return data

    @model_validator(mode="after")
    def _method_fields(self) -> DistillConfig:
        if self.method != "fitnet" and self.hint is not None:
            raise ValueError(f'"hint" applies to method "fitnet" only, not {self.method!r}')
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer 'sgd' with momentum > 0")
        return self

    @property
    def uses_teacher(self) -> bool:
        return self.method != "scratch"

    @property
    def auto_fields(self) -> list[str]:
        """The fields still ``"auto"`` that matter for this method, to be resolved before
        training (:mod:`kdcore.tune`)."""
        fields = []
        if self.method != "scratch":
            fields += [f for f in ("temperature", "alpha") if getattr(self, f) == AUTO]
        if self.hint is not None and self.hint.auto:
            fields.append("hint")
        return fields

    def kd_weights(self) -> tuple[float, float]:
        """``(temperature, alpha)``, resolved: a run never trains with ``"auto"``."""
        t, a = self.temperature, self.alpha
        if isinstance(t, str) or isinstance(a, str):
            raise ValueError(
                'temperature and alpha must be resolved from "auto" before training '
                "(kdcore.tune.resolve_auto)"
            )
        return t, a


def epoch_rank(metrics: dict[str, Any]) -> tuple[float, float]:
    """How two validation epochs compare (higher is better): accuracy, then the lower NLL.
    The one order of the engine's exported epoch and of a sweep's running points."""
    return metrics["val_accuracy"], -metrics.get("val_nll", 0.0)


def parse_config(data: str | bytes | dict[str, object]) -> DistillConfig:
    """Parse a config from JSON text or a dict (the CLI's files).

    Raises:
        SpecError: naming each bad field and what to change.
    """
    return parse_json_model(DistillConfig, data, what="config")


@dataclass(frozen=True)
class StagePlan:
    """One stage of a run: ``hint`` (FitNets stage 1), then ``kd``; or ``scratch``; or ``kd``.

    ``lr`` None: the hint stage's default, set once the hint map's shape is known.
    """

    name: StageName
    epochs: int
    lr: float | None


def plan_stages(config: DistillConfig) -> list[StagePlan]:
    """The stages ``config`` runs, in order: the one plan the trainer and the worker share."""
    if config.method == "fitnet":
        assert config.hint is not None
        return [
            StagePlan("hint", config.hint.epochs, config.hint.lr),
            StagePlan("kd", config.epochs, config.lr),
        ]
    return [StagePlan("kd" if config.method == "kd" else "scratch", config.epochs, config.lr)]


def epochs_before_stage(config: DistillConfig) -> list[int]:
    """For each stage of :func:`plan_stages`, how many epochs the stages before it run."""
    offsets, total = [], 0
    for stage in plan_stages(config):
        offsets.append(total)
        total += stage.epochs
    return offsets
