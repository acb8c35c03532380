"""One whole job: load data and teacher, train, export the student, write ``report.json``.

The CLI and the service's worker both call :func:`run`; everything a job leaves behind is
in ``out_dir``: ``student.safetensors`` + ``student.json`` and the graph exports,
``report.json``, ``metrics.jsonl`` and ``checkpoint.pt``. With a ``teacher_cache`` (a
:class:`kdcore.cache.TeacherCache`: a :class:`~kdcore.cache.LocalFolderCache` for the CLI, the
worker's storage for the service) the teacher's outputs are read from it or built into it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from torch import nn

from kdcore.cache import CacheRequest, TeacherCache, file_sha256
from kdcore.contract import (
    CACHE_ENTRY_MAX_BYTES,
    DistillConfig,
    Shape,
    Spec,
    layer_shapes,
    plan_stages,
    resolve_hint,
)
from kdcore.data import Dataset, load_dataset
from kdcore.export import StudentMeta, export_student
from kdcore.files import atomic_write
from kdcore.inspection import inspect_model
from kdcore.report import Report, TeacherCacheReport, build_report
from kdcore.runtime import resolve_device
from kdcore.train import CancelFn, Progress, ProgressFn, TrainResult, train
from kdcore.tune import ProbeResult, candidates, choose_kd_weights, probe_epochs
from kdcore.weights import freeze, load_model

REPORT_NAME = "report.json"
PROBES_DIR = "probes"  # under out_dir: one folder per probe of kdcore.tune
BASELINE_DIR = "baseline"  # under out_dir: the student trained alone
DEFAULT_FORMATS: tuple[str, ...] = ("safetensors", "torchscript", "pt2", "onnx")


@dataclass(frozen=True)
class TeacherFile:
    """A teacher on disk: weights, plus the spec for weight-only formats."""

    path: Path
    spec: Spec | None = None
    allow_code: bool = False  # TorchScript / torch.export files carry code: opt in only


def load_teacher(teacher: TeacherFile, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Load, then freeze (eval mode, no gradients): the one place a teacher is frozen."""
    model = load_model(
        teacher.path, teacher.spec, input_shape, num_classes, allow_code=teacher.allow_code
    )
    return freeze(model)


def run(
    *,
    spec: Spec,
    config: DistillConfig,
    data: Path | Dataset,
    out_dir: Path,
    val: Path | Dataset | None = None,
    test: Path | Dataset | None = None,
    teacher: TeacherFile | None = None,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    formats: Sequence[str] = DEFAULT_FORMATS,
    resume: bool = True,
    teacher_cache: TeacherCache | None = None,
    cache_tenant: str | None = None,
    cache_entry_max_bytes: int | None = None,
) -> Report:
    """Run a job end to end and return its report (also written to ``out_dir/report.json``).

    In order: ``"auto"`` choices are resolved (the hint from the layer shapes, temperature
    and alpha by probe runs on the validation split, :mod:`kdcore.tune`, in
    ``out_dir/probes/``); the student trains; with ``config.baseline`` the same student
    trains alone (method ``scratch``, same data, budget and seed, in ``out_dir/baseline/``);
    the student is exported and the report written. ``test``: data the report scores the
    models on (default: the validation data, which also chose the exported epoch).

    ``teacher_cache``: where teacher-cache entries live (:mod:`kdcore.cache`), shared by
    jobs; None runs the teacher in the loop as before. The teacher's identity in the cache
    key is the sha256 of its file; the data's, that of its file (or of the tensors, for a
    :class:`Dataset` or a folder). ``cache_tenant`` goes into the key
    (:attr:`kdcore.cache.CacheKey.tenant`): the service's, so tenants never share entries.
    ``cache_entry_max_bytes``: :attr:`kdcore.cache.CacheRequest.entry_max_bytes` (None: the
    default).
    """
    resolve_device(config.device)  # before loading anything: this machine may lack it
    train_data = data if isinstance(data, Dataset) else load_dataset(data)
    val_data = _load(val, train_data, "validation")
    test_data = _load(test, train_data, "test")
    teacher_model = None
    if config.uses_teacher:
        if teacher is None:
            raise ValueError(f"method {config.method!r} needs a teacher")
        teacher_model = load_teacher(teacher, train_data.input_shape, train_data.num_classes)

    request = None
    if teacher_cache is not None and teacher is not None and config.uses_teacher:
        request = CacheRequest(
            store=teacher_cache,
            teacher_sha256=file_sha256(teacher.path),
            data_sha256=file_sha256(data) if isinstance(data, Path) and data.is_file() else None,
            tenant=cache_tenant,
            entry_max_bytes=CACHE_ENTRY_MAX_BYTES
            if cache_entry_max_bytes is None
            else cache_entry_max_bytes,
            # Probes read the job's entry: sized for its KD stage, not theirs.
            stage_epochs=config.epochs,
        )
    progress = _Progress(config, on_progress)

    def run_train(
        cfg: DistillConfig, folder: Path, model: nn.Module | None, report: ProgressFn | None
    ) -> TrainResult:
        return train(
            spec=spec,
            config=cfg,
            train_data=train_data,
            val_data=val_data,
            teacher=model,
            out_dir=folder,
            on_progress=report,
            should_cancel=should_cancel,
            resume=resume,
            teacher_cache=request if cfg.uses_teacher else None,
        )

    probes_run: list[str] = []

    def run_probe(cfg: DistillConfig, name: str) -> ProbeResult:
        report = progress.probe(len(probes_run))
        probes_run.append(name)
        result = run_train(cfg, out_dir / PROBES_DIR / name, teacher_model, report)
        best = result.best
        if not best:
            raise ValueError(
                'temperature/alpha "auto" choose on validation data: set val_split > 0 '
                "or give validation data"
            )
        return ProbeResult(best["val_accuracy"], best.get("val_nll", math.inf))

    choices: dict[str, Any] = {}
    if config.hint is not None and config.hint.auto:
        assert teacher_model is not None
        config, choice = resolve_hint(
            config,
            layer_shapes(spec, train_data.input_shape, train_data.num_classes),
            _teacher_shapes(teacher_model, train_data.input_shape),
            train_data.input_shape,
        )
        if choice is not None:
            choices["hint"] = asdict(choice)
    config, kd_choice = choose_kd_weights(config, run_probe)
    if kd_choice is not None:
        choices["kd"] = kd_choice
    result = run_train(config, out_dir, teacher_model, progress.main())
    baseline = None
    if config.baseline and config.uses_teacher:
        baseline = run_train(
            baseline_config(config), out_dir / BASELINE_DIR, None, progress.baseline()
        )

    meta = StudentMeta(
        spec=spec,
        input_shape=list(train_data.input_shape),
        num_classes=train_data.num_classes,
        classes=list(train_data.classes),
        preprocess=result.normalizer.to_dict(),
    )
    notes: list[str] = []  # formats left out, and why
    export_student(result.student, meta, out_dir, formats=formats, warn=notes.append)
    n_train = len(train_data) - (
        len(result.val_data) if val_data is None and result.val_data else 0
    )
    report = build_report(
        method=config.method,
        student=result.student,
        teacher=result.teacher,
        baseline=baseline.student if baseline is not None else None,
        train_samples=n_train,
        eval_data=test_data if test_data is not None else result.val_data,
        eval_split="test" if test_data is not None else "validation",
        input_shape=train_data.input_shape,
        classes=list(train_data.classes),
        normalizer=result.normalizer,
        config=config.model_dump(mode="json"),
        student_spec=spec.model_dump(mode="json"),
        stage_seconds=result.stage_seconds,
        best=result.best,
        exported=result.exported,
        choices=choices,
        warnings=notes,
        device=str(result.runtime.device),
        precision=result.runtime.precision,
        memory_format=result.runtime.memory_format,
        teacher_cache=TeacherCacheReport(
            **asdict(result.teacher_cache),
            hint=TeacherCacheReport(**asdict(result.hint_cache)) if config.hint else None,
        ),
    )
    with atomic_write(out_dir / REPORT_NAME) as tmp:
        tmp.write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    return report


def baseline_config(config: DistillConfig) -> DistillConfig:
    """The student alone: ``config`` as method ``scratch`` (same data, epochs, schedule,
    augmentation, seed, checkpoint rule), nothing of the teacher's."""
    return config.model_copy(update={"method": "scratch", "hint": None, "baseline": False})


def _load(data: Path | Dataset | None, train_data: Dataset, what: str) -> Dataset | None:
    if data is None or isinstance(data, Dataset):
        loaded = data
    else:
        loaded = load_dataset(data)
    if loaded is not None and loaded.input_shape != train_data.input_shape:
        raise ValueError(
            f"{what} samples have shape {loaded.input_shape}, training samples "
            f"{train_data.input_shape}; they must match"
        )
    return loaded


def _teacher_shapes(teacher: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Shape]:
    return {layer.path: tuple(layer.shape) for layer in inspect_model(teacher, input_shape).layers}


class _Progress:
    """One progress scale for a job's runs: probes, the student, the baseline, in that
    order, each weighted by its epochs. Probe and baseline epochs report as steps without
    metrics (the job's metric points are the student's), under stage "probe"/"baseline"."""

    def __init__(self, config: DistillConfig, on_progress: ProgressFn | None) -> None:
        self.on_progress = on_progress
        tuned = bool({"temperature", "alpha"} & set(config.auto_fields))
        self.probe_epochs = probe_epochs(config.epochs) if tuned else 0
        probes = self.probe_epochs * len(candidates(config)) if tuned else 0
        main = sum(s.epochs for s in plan_stages(config))
        baseline = config.epochs if config.baseline and config.uses_teacher else 0
        self.main_start, self.baseline_start = probes, probes + main
        self.spans = {"main": main, "baseline": baseline}
        self.total = probes + main + baseline

    def probe(self, index: int) -> ProgressFn | None:
        return self._forward(index * self.probe_epochs, self.probe_epochs, "probe")

    def main(self) -> ProgressFn | None:
        return self._forward(self.main_start, self.spans["main"], None)

    def baseline(self) -> ProgressFn | None:
        return self._forward(self.baseline_start, self.spans["baseline"], "baseline")

    def _forward(
        self, start: int, epochs: int, sub: Literal["probe", "baseline"] | None
    ) -> ProgressFn | None:
        report = self.on_progress
        if report is None:
            return None
        total = self.total

        def forward(p: Progress) -> None:
            fraction = min(1.0, (start + p.fraction * epochs) / total)
            if sub is None:
                report(replace(p, fraction=fraction))
            else:
                report(replace(p, kind="step", stage=sub, metrics={}, fraction=fraction))

        return forward
