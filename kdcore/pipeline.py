"""One whole job: load data and teacher, train, export the student, write ``report.json``.

The CLI and the service's worker both call :func:`run`; everything a job leaves behind is
in ``out_dir``: ``student.safetensors`` + ``student.json`` and the graph exports,
``report.json``, ``metrics.jsonl`` and ``checkpoint.pt``. With a ``teacher_cache`` (a
:class:`kdcore.cache.TeacherCache`: a :class:`~kdcore.cache.LocalFolderCache` for the CLI, the
worker's storage for the service) the teacher's outputs are read from it or built into it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from kdcore.cache import CacheRequest, TeacherCache, file_sha256
from kdcore.contract import CACHE_ENTRY_MAX_BYTES, DistillConfig, Spec
from kdcore.data import Dataset, load_dataset
from kdcore.export import StudentMeta, export_student
from kdcore.files import atomic_write
from kdcore.report import Report, TeacherCacheReport, build_report
from kdcore.train import CancelFn, ProgressFn, train
from kdcore.weights import freeze, load_model

REPORT_NAME = "report.json"
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

    ``teacher_cache``: where teacher-cache entries live (:mod:`kdcore.cache`), shared by
    jobs; None runs the teacher in the loop as before. The teacher's identity in the cache
    key is the sha256 of its file; the data's, that of its file (or of the tensors, for a
    :class:`Dataset` or a folder). ``cache_tenant`` goes into the key
    (:attr:`kdcore.cache.CacheKey.tenant`): the service's, so tenants never share entries.
    ``cache_entry_max_bytes``: :attr:`kdcore.cache.CacheRequest.entry_max_bytes` (None: the
    default).
    """
    train_data = data if isinstance(data, Dataset) else load_dataset(data)
    val_data = val if isinstance(val, Dataset) or val is None else load_dataset(val)
    if val_data is not None and val_data.input_shape != train_data.input_shape:
        raise ValueError(
            f"validation samples have shape {val_data.input_shape}, training samples "
            f"{train_data.input_shape}; they must match"
        )
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
        )
    result = train(
        spec=spec,
        config=config,
        train_data=train_data,
        val_data=val_data,
        teacher=teacher_model,
        out_dir=out_dir,
        on_progress=on_progress,
        should_cancel=should_cancel,
        resume=resume,
        teacher_cache=request,
    )
    meta = StudentMeta(
        spec=spec,
        input_shape=list(train_data.input_shape),
        num_classes=train_data.num_classes,
        classes=list(train_data.classes),
        preprocess=result.normalizer.to_dict(),
    )
    export_student(result.student, meta, out_dir, formats=formats)
    n_train = len(train_data) - (
        len(result.val_data) if val_data is None and result.val_data else 0
    )
    report = build_report(
        method=config.method,
        student=result.student,
        teacher=result.teacher,
        train_samples=n_train,
        eval_data=result.val_data,
        input_shape=train_data.input_shape,
        classes=list(train_data.classes),
        normalizer=result.normalizer,
        config=config.model_dump(mode="json"),
        student_spec=spec.model_dump(mode="json"),
        stage_seconds=result.stage_seconds,
        best=result.best,
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
