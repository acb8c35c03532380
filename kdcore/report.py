"""``report.json``: teacher and student side by side, as in FitNets Table 5."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import torch
from pydantic import BaseModel
from torch import nn

from kdcore.data import Dataset, Normalizer
from kdcore.evaluate import measure_speed, predict, score, size_bytes
from kdcore.inspection import inspect_model


class ModelReport(BaseModel):
    accuracy: float | None
    top5: float | None
    nll: float | None
    agreement: float | None = None  # student only: top-1 agreement with the teacher
    params: int
    macs: int
    size_bytes: int
    latency_ms: float  # CPU, batch 1, one thread, median of 50
    throughput: float  # CPU samples/s at batch 256 on cpu_threads threads


class DataReport(BaseModel):
    train_samples: int
    eval_samples: int
    # What the models were scored on: the validation data (which also chose the exported
    # epoch), or held-out test data given to the job.
    eval_split: Literal["validation", "test"] = "validation"
    input_shape: list[int]
    classes: list[str]


class TeacherCacheReport(BaseModel):
    """What the teacher cache did (:class:`kdcore.cache.CacheInfo`): ``hit`` (a verified
    entry was used, the teacher never ran in the KD stage), ``miss`` (the entry was built,
    in ``build_seconds``) or ``off`` (no cache, or a method without a teacher)."""

    status: Literal["hit", "miss", "off"] = "off"
    key: str | None = None
    bytes: int = 0
    build_seconds: float = 0.0
    note: str | None = None  # why the cache was not used, when one was asked for
    # FitNets: the hint stage's entry of hint maps, the same fields (None for other methods).
    hint: TeacherCacheReport | None = None


class Report(BaseModel):
    method: str
    created_at: datetime
    data: DataReport
    teacher: ModelReport | None
    student: ModelReport
    # config.baseline: the same student trained alone (method scratch, same data, budget
    # and seed), and what distillation bought: student − baseline accuracy, in points.
    baseline: ModelReport | None = None
    gain_points: float | None = None
    compression: float | None  # teacher params / student params
    speedup: float | None  # teacher latency / student latency
    cpu_threads: int
    device: str
    # As the run resolved them (the config may say "auto"): kdcore.runtime.
    precision: str = "fp32"
    memory_format: str = "contiguous"
    stage_seconds: dict[str, float]
    best: dict[str, Any]
    # Which epoch's weights were exported, and why (kdcore.train.loop._choose_export).
    exported: dict[str, Any] = {}
    # The "auto" fields as resolved before training: "hint" (kdcore.contract.hints),
    # "kd" (temperature/alpha by probes, kdcore.tune). ``config`` holds the resolved values.
    choices: dict[str, Any] = {}
    config: dict[str, Any]
    student_spec: dict[str, Any]
    teacher_cache: TeacherCacheReport = TeacherCacheReport()
    # What the job could not do but did not fail for: an export format left out, and why.
    warnings: list[str] = []


def describe_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    eval_data: Dataset | None,
    normalizer: Normalizer,
    *,
    reference_logits: torch.Tensor | None = None,
) -> tuple[ModelReport, torch.Tensor | None]:
    """Scores on ``eval_data`` plus size and CPU speed; also returns the logits it scored."""
    summary = inspect_model(model, input_shape)
    speed = measure_speed(model, input_shape)
    logits = scores = None
    if eval_data is not None and len(eval_data):
        logits = predict(model, eval_data, normalizer)
        scores = score(logits, eval_data.y, reference_logits)
    report = ModelReport(
        accuracy=scores.accuracy if scores else None,
        top5=scores.top5 if scores else None,
        nll=scores.nll if scores else None,
        agreement=scores.agreement if scores else None,
        params=summary.params,
        macs=summary.macs,
        size_bytes=size_bytes(model),
        latency_ms=speed.latency_ms,
        throughput=speed.throughput,
    )
    return report, logits


def build_report(
    *,
    method: str,
    student: nn.Module,
    teacher: nn.Module | None,
    train_samples: int,
    eval_data: Dataset | None,
    input_shape: tuple[int, ...],
    classes: list[str],
    normalizer: Normalizer,
    config: dict[str, Any],
    student_spec: dict[str, Any],
    stage_seconds: dict[str, float],
    best: dict[str, Any],
    device: str,
    precision: str,
    memory_format: str,
    teacher_cache: TeacherCacheReport | None = None,
    baseline: nn.Module | None = None,
    eval_split: Literal["validation", "test"] = "validation",
    exported: dict[str, Any] | None = None,
    choices: dict[str, Any] | None = None,
    warnings: list[str] | None = None,
) -> Report:
    t_report = t_logits = None
    if teacher is not None:
        t_report, t_logits = describe_model(teacher, input_shape, eval_data, normalizer)
    s_report, _ = describe_model(
        student, input_shape, eval_data, normalizer, reference_logits=t_logits
    )
    b_report = gain = None
    if baseline is not None:
        b_report, _ = describe_model(
            baseline, input_shape, eval_data, normalizer, reference_logits=t_logits
        )
        if s_report.accuracy is not None and b_report.accuracy is not None:
            gain = 100 * (s_report.accuracy - b_report.accuracy)
    return Report(
        method=method,
        created_at=datetime.now(UTC),
        data=DataReport(
            train_samples=train_samples,
            eval_samples=len(eval_data) if eval_data is not None else 0,
            eval_split=eval_split,
            input_shape=list(input_shape),
            classes=classes,
        ),
        teacher=t_report,
        student=s_report,
        baseline=b_report,
        gain_points=gain,
        compression=t_report.params / s_report.params if t_report else None,
        speedup=t_report.latency_ms / s_report.latency_ms if t_report else None,
        cpu_threads=torch.get_num_threads(),
        device=device,
        precision=precision,
        memory_format=memory_format,
        stage_seconds=stage_seconds,
        best=best,
        exported=exported or {},
        choices=choices or {},
        config=config,
        student_spec=student_spec,
        teacher_cache=teacher_cache or TeacherCacheReport(),
        warnings=warnings or [],
    )
