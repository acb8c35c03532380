"""Job submission: every check that needs no torch happens here, so a bad request is a 422
that names the valid choices instead of a job that fails later."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.kit.deps import defer_task
from api.kit.errors import Conflict, Invalid, TooManyRequests
from kdcore.config import DistillConfig
from kdcore.layer_paths import describe_missing_layer, layer_paths
from kdcore.specs import SpecError, parse_arch
from store.models import AssetStatus, DatasetRecord, Job, Teacher, Tenant
from store.queue import RUN_JOB
from store.repositories.catalog import DatasetRepository, TeacherRepository
from store.repositories.jobs import JobRepository
from store.settings import Settings

from .schemas import JobCreate, JobError, JobPublic
from .shapes import Shape, regressor_problem, student_shapes


def submit(
    session: Session,
    settings: Settings,
    *,
    tenant: Tenant,
    body: JobCreate,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """Create and queue a job; returns ``(job, created)`` (False: an idempotent retry)."""
    jobs = JobRepository(session, tenant.id)
    if idempotency_key:
        existing = jobs.by_idempotency_key(idempotency_key)
        if existing is not None:
            return existing, False
    config = _config(body.config)
    try:
        student = parse_arch(body.student)
    except SpecError as exc:
        raise Invalid(f"student: {exc}") from exc

    datasets = DatasetRepository(session, tenant.id)
    data = _ready_dataset(datasets.get(body.dataset_id), body.dataset_id, "dataset_id")
    val = None
    if body.val_dataset_id is not None:
        val = _ready_dataset(
            datasets.get(body.val_dataset_id), body.val_dataset_id, "val_dataset_id"
        )
        if val.input_shape != data.input_shape or len(val.classes or []) != len(data.classes or []):
            raise Invalid(
                f"val_dataset_id: samples {val.input_shape} with "
                f"{len(val.classes or [])} classes do not match the training data "
                f"({data.input_shape}, {len(data.classes or [])} classes)"
            )
    try:
        shapes = student_shapes(student, tuple(data.input_shape or ()), len(data.classes or []))
    except SpecError as exc:
        raise Invalid(f"student: {exc}") from exc
    teacher = _teacher(session, tenant, body, config, data)
    if config.hint is not None and teacher is not None:
        _check_hint(config, teacher, student, shapes)
    train_samples = (data.samples or 0) * (1 if val is not None else 1 - config.val_split)
    if config.batch_size > train_samples:
        raise Invalid(
            f"config.batch_size {config.batch_size} is larger than the "
            f"{int(train_samples)} training samples; lower it"
        )
    limit = tenant.max_running_jobs or settings.max_running_jobs_per_tenant
    if jobs.active_count() >= limit:
        raise TooManyRequests(
            f"this tenant already has {limit} queued or running jobs; wait "
            "for one to finish or cancel one",
            headers={"Retry-After": "60"},
        )

    job = Job(
        tenant_id=tenant.id,
        name=body.name or "",
        idempotency_key=idempotency_key,
        teacher_id=teacher.id if teacher else None,
        dataset_id=data.id,
        val_dataset_id=val.id if val else None,
        student=student.model_dump(mode="json"),
        config=config.model_dump(mode="json"),
        method=config.method,
        metrics={},
    )
    try:
        with session.begin_nested():
            jobs.add(job)
    except IntegrityError:  # the same Idempotency-Key raced in: return the first job
        existing = jobs.by_idempotency_key(idempotency_key or "")
        if existing is None:
            raise
        return existing, False
    defer_task(session, RUN_JOB, [str(job.id)], queue=settings.queue)
    return job, True


def _config(raw: dict[str, Any]) -> DistillConfig:
    try:
        return DistillConfig.model_validate(raw)
    except ValidationError as exc:
        errors = [
            {"loc": ["config", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        raise Invalid(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors), errors=errors
        ) from exc


def _ready_dataset(d: DatasetRecord | None, id_: Any, field: str) -> DatasetRecord:
    if d is None:
        raise Invalid(f"{field}: no dataset {id_}")
    if d.status == AssetStatus.validating:
        raise Conflict(f"{field}: dataset {id_} is still being validated; retry in a moment")
    if d.status == AssetStatus.invalid:
        raise Invalid(f"{field}: dataset {id_} is invalid: {d.error}")
    return d


def _teacher(
    session: Session, tenant: Tenant, body: JobCreate, config: DistillConfig, data: DatasetRecord
) -> Teacher | None:
    if not config.uses_teacher:
        if body.teacher_id is not None:
            raise Invalid('teacher_id: method "scratch" trains without a teacher; send null')
        return None
    if body.teacher_id is None:
        raise Invalid(f"teacher_id: method {config.method!r} needs a teacher")
    teacher = TeacherRepository(session, tenant.id).get(body.teacher_id)
    if teacher is None:
        raise Invalid(f"teacher_id: no teacher {body.teacher_id}")
    if teacher.status == AssetStatus.validating:
        raise Conflict(f"teacher {teacher.id} is still being validated; retry in a moment")
    if teacher.status == AssetStatus.invalid:
        raise Invalid(f"teacher_id: teacher {teacher.id} is invalid: {teacher.error}")
    if list(teacher.input_shape) != list(data.input_shape or []):
        raise Invalid(
            f"teacher takes input {teacher.input_shape}, the dataset has {data.input_shape}"
        )
    if teacher.num_classes != len(data.classes or []):
        raise Invalid(
            f"teacher has {teacher.num_classes} classes, the dataset {len(data.classes or [])}"
        )
    return teacher


def _check_hint(
    config: DistillConfig, teacher: Teacher, student: Any, shapes: dict[str, Shape] | None
) -> None:
    assert config.hint is not None
    teacher_paths = [layer["path"] for layer in teacher.layers or []]
    if config.hint.teacher_layer not in teacher_paths:
        raise Invalid(
            "config.hint.teacher_layer: "
            + describe_missing_layer(config.hint.teacher_layer, teacher_paths)
        )
    student_paths = layer_paths(student)
    if config.hint.student_layer not in student_paths:
        raise Invalid(
            "config.hint.student_layer: "
            + describe_missing_layer(config.hint.student_layer, student_paths)
        )
    guided = (shapes or {}).get(config.hint.student_layer)
    hint = next(
        (
            layer.get("shape")
            for layer in teacher.layers or []
            if layer["path"] == config.hint.teacher_layer
        ),
        None,
    )
    if guided is not None and hint is not None:
        problem = regressor_problem(tuple(guided), tuple(hint))
        if problem is not None:
            raise Invalid(
                f"config.hint: student layer {config.hint.student_layer!r} {tuple(guided)} "
                f"and teacher layer {config.hint.teacher_layer!r} {tuple(hint)} do not fit: "
                + problem
            )


def to_public(j: Job) -> JobPublic:
    error = JobError(code=j.error_code, message=j.error_message or "") if j.error_code else None
    return JobPublic(
        id=j.id,
        name=j.name,
        status=j.status,
        method=j.method,
        teacher_id=j.teacher_id,
        dataset_id=j.dataset_id,
        val_dataset_id=j.val_dataset_id,
        student=j.student,
        config=j.config,
        stage=j.stage,
        epoch=j.epoch,
        progress=j.progress,
        metrics=j.metrics or {},
        error=error,
        attempts=j.attempts,
        cancel_requested=j.cancel_requested,
        created_at=j.created_at,
        updated_at=j.updated_at,
        started_at=j.started_at,
        finished_at=j.finished_at,
    )
