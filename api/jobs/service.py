"""Job submission: every check that needs no torch happens here, so a bad request is a 422
that names the valid choices instead of a job that fails later."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.kit.cost import check_limit, check_model, size
from api.kit.deps import defer_task
from api.kit.errors import Conflict, Invalid, TooManyRequests
from api.kit.idempotency import check_same_request, request_hash
from kdcore.contract import (
    DistillConfig,
    Shape,
    Spec,
    SpecError,
    check_hint,
    layer_shapes,
    model_cost,
    plan_stages,
    resolve_hint,
)
from store.models import AssetStatus, DatasetRecord, Job, Teacher, Tenant
from store.queue import RUN_JOB, fair_priority
from store.repositories import events
from store.repositories.catalog import DatasetRepository, TeacherRepository
from store.repositories.jobs import JobRepository
from store.repositories.limits import lock_tenant, pending_jobs
from store.settings import Settings

from .schemas import JobCreate, JobError, JobPublic

Loc = tuple[str | int, ...]


def as_sent(loc: Loc) -> Loc:
    """A field of a job request is named by its own path (``config.hint``)."""
    return loc


@dataclass(frozen=True)
class Checked:
    """A job request that passed every check, with the rows it names."""

    body: JobCreate
    data: DatasetRecord
    val: DatasetRecord | None
    teacher: Teacher | None
    choices: dict[str, Any] = field(default_factory=dict)  # "auto" values resolved here


def submit(
    session: Session,
    settings: Settings,
    *,
    tenant: Tenant,
    body: JobCreate,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """Create and queue a job; returns ``(job, created)`` (False: an idempotent retry).

    Raises:
        IdempotencyKeyReused: the key was used for a different request.
    """
    jobs = JobRepository(session, tenant.id)
    sent = request_hash(body)
    if idempotency_key:
        existing = jobs.by_idempotency_key(idempotency_key)
        if existing is not None:
            check_same_request(idempotency_key, existing.request_hash, sent, what="job")
            return existing, False
    checked = check(session, settings=settings, tenant=tenant, body=body)
    # Count and insert under the tenant's row lock: concurrent submissions take turns, so
    # none gets past the limit (store.repositories.limits).
    tenant = lock_tenant(session, tenant.id)
    if idempotency_key and (existing := jobs.by_idempotency_key(idempotency_key)):
        return existing, False  # the same key committed while this request waited
    limit = tenant.max_running_jobs or settings.max_running_jobs_per_tenant
    if jobs.active_count() >= limit:
        raise TooManyRequests(
            f"this tenant already has {limit} queued or running jobs; wait "
            "for one to finish or cancel one",
            headers={"Retry-After": "60"},
        )

    rank = pending_jobs(session, tenant.id)  # behind the tenant's own queued and running jobs
    job = new_job(tenant, checked, name=body.name or "", idempotency_key=idempotency_key)
    job.request_hash = sent if idempotency_key else None
    try:
        with session.begin_nested():
            jobs.add(job)
            events.queued(session, [job])
    except IntegrityError:  # the same Idempotency-Key raced in: return the first job
        existing = jobs.by_idempotency_key(idempotency_key or "")
        if existing is None:
            raise
        check_same_request(idempotency_key or "", existing.request_hash, sent, what="job")
        return existing, False
    defer_task(session, RUN_JOB, [str(job.id)], queue=settings.queue, priority=fair_priority(rank))
    return job, True


def check(
    session: Session,
    *,
    settings: Settings,
    tenant: Tenant,
    body: JobCreate,
    at: Callable[[Loc], Loc] = as_sent,
) -> Checked:
    """Every check of a job request that needs no torch: the datasets and the teacher belong
    to the tenant and are ready and agree, the student takes the data, the job's cost is
    within the service's limits, FitNets layers exist and join, the batch fits. ``at`` maps
    a field's path in ``body`` to its path in what the user sent (a sweep's points are job
    requests built from a sweep's body).

    Raises:
        Invalid: naming the field and what to change (:class:`OverLimit`: a cost limit).
        Conflict: a dataset or the teacher is still being validated.
    """
    config, student = body.config, body.student
    if config.device == "cuda" and not settings.cuda_workers:
        raise Invalid(
            f'{_dotted(at, "config", "device")}: "cuda", but this service\'s workers have no '
            'CUDA device (KDSERVE_CUDA_WORKERS is false); send "auto" or "cpu"'
        )
    datasets = DatasetRepository(session, tenant.id)
    data = _ready_dataset(datasets.get(body.dataset_id), body.dataset_id, _dotted(at, "dataset_id"))
    val = None
    if body.val_dataset_id is not None:
        field = _dotted(at, "val_dataset_id")
        val = _ready_dataset(datasets.get(body.val_dataset_id), body.val_dataset_id, field)
        if val.input_shape != data.input_shape or len(val.classes or []) != len(data.classes or []):
            raise Invalid(
                f"{field}: samples {val.input_shape} with "
                f"{len(val.classes or [])} classes do not match the training data "
                f"({data.input_shape}, {len(data.classes or [])} classes)"
            )
    shapes = _student_shapes(student, data, at)
    teacher = _teacher(session, tenant, body, config, data, at)
    train_samples = (data.samples or 0) * (1 if val is not None else 1 - config.val_split)
    _check_cost(settings, body, data, shapes, teacher, int(train_samples), at)
    hint_choice = None
    if config.hint is not None and teacher is not None:
        teacher_shapes = {layer["path"]: tuple(layer["shape"]) for layer in teacher.layers or []}
        try:
            # "auto" layers are chosen here, from the shapes, and stored in the job's config.
            config, hint_choice = resolve_hint(
                config, shapes, teacher_shapes, tuple(data.input_shape or ())
            )
            assert config.hint is not None
            check_hint(config.hint, shapes, teacher_shapes)
        except SpecError as exc:
            raise _invalid(_relocated(exc, at)) from exc
        body = body.model_copy(update={"config": config})
    if {"temperature", "alpha"} & set(config.auto_fields) and val is None and not config.val_split:
        loc = at(("config", "val_split"))
        raise _invalid(
            SpecError(
                f'{".".join(map(str, loc))}: temperature/alpha "auto" are chosen on validation '
                "data: give val_dataset_id or a val_split above 0",
                loc=loc,
            )
        )
    if config.batch_size > train_samples:
        raise Invalid(
            f"{_dotted(at, 'config', 'batch_size')} {config.batch_size} is larger than the "
            f"{int(train_samples)} training samples; lower it"
        )
    choices = {"hint": asdict(hint_choice)} if hint_choice is not None else {}
    return Checked(body=body, data=data, val=val, teacher=teacher, choices=choices)


def new_job(
    tenant: Tenant,
    checked: Checked,
    *,
    name: str,
    idempotency_key: str | None = None,
    sweep_id: uuid.UUID | None = None,
) -> Job:
    """The row of a checked request (not yet added to the session)."""
    body = checked.body
    return Job(
        id=uuid.uuid4(),
        tenant_id=tenant.id,
        name=name,
        idempotency_key=idempotency_key,
        teacher_id=checked.teacher.id if checked.teacher else None,
        dataset_id=checked.data.id,
        val_dataset_id=checked.val.id if checked.val else None,
        student=body.student.model_dump(mode="json"),
        config=body.config.model_dump(mode="json"),
        method=body.config.method,
        sweep_id=sweep_id,
        metrics={},
        choices=checked.choices,
    )


def _dotted(at: Callable[[Loc], Loc], *path: str) -> str:
    return ".".join(map(str, at(path)))


def _student_shapes(
    student: Spec, data: DatasetRecord, at: Callable[[Loc], Loc]
) -> dict[str, Shape]:
    """The student's layer shapes on this data: the family's own torch-free check."""
    try:
        return layer_shapes(student, tuple(data.input_shape or ()), len(data.classes or []))
    except SpecError as exc:
        raise Invalid(
            f"{_dotted(at, 'student')}: {exc}", errors=_located(exc, *at(("student",)))
        ) from exc


def _check_cost(
    settings: Settings,
    body: JobCreate,
    data: DatasetRecord,
    shapes: dict[str, Shape],
    teacher: Teacher | None,
    train_samples: int,
    at: Callable[[Loc], Loc],
) -> None:
    """The job's cost against the service's limits (``KDSERVE_MAX_JOB_*``): the student's
    parameters, MACs and one batch's activations, the teacher's parameters and MACs (as its
    validation counted them), and samples × epochs. Cheap: the spec's field bounds cap the
    layers, and this is one pass over the shapes already listed."""
    config = body.config
    cost = model_cost(
        body.student, tuple(data.input_shape or ()), len(data.classes or []), shapes=shapes
    )
    student = _dotted(at, "student")
    check_model(
        settings,
        field=student,
        what="the student",
        params=cost.params,
        macs=cost.macs,
        instead="a smaller student",
    )
    if teacher is not None:
        check_model(
            settings,
            field=_dotted(at, "teacher_id"),
            what="the teacher",
            params=teacher.params,
            macs=teacher.macs,
            instead="another teacher",
        )
    batch = cost.activation_bytes(config.batch_size)
    check_limit(
        student,
        f"one batch of {config.batch_size} keeps about {size(batch)} of activations "
        f"({cost.activations:,} values per sample, as float32)",
        batch,
        settings.max_job_activation_bytes,
        "KDSERVE_MAX_JOB_ACTIVATION_BYTES",
        f"lower {_dotted(at, 'config', 'batch_size')}, or use a smaller student",
    )
    epochs = sum(stage.epochs for stage in plan_stages(config))
    epochs += config.epochs if config.baseline else 0
    check_limit(
        _dotted(at, "config", "epochs"),
        f"{epochs:,} epochs (every stage{' and the baseline' if config.baseline else ''}) "
        f"over {train_samples:,} training samples are {epochs * train_samples:,} "
        "sample-epochs",
        epochs * train_samples,
        settings.max_job_sample_epochs,
        "KDSERVE_MAX_JOB_SAMPLE_EPOCHS",
        "train for fewer epochs, or on fewer samples",
    )


def _relocated(exc: SpecError, at: Callable[[Loc], Loc]) -> SpecError:
    """``exc`` naming its field as sent: its message starts with the field's path."""
    if not exc.loc:
        return exc
    loc = at(exc.loc)
    message = str(exc).removeprefix(f"{'.'.join(map(str, exc.loc))}: ")
    return SpecError(f"{'.'.join(map(str, loc))}: {message}", loc=loc)


def _invalid(exc: SpecError) -> Invalid:
    return Invalid(str(exc), errors=_located(exc))


def _located(exc: SpecError, *prefix: str | int) -> list[dict[str, Any]]:
    loc = [*prefix, *exc.loc] if exc.loc or prefix else []
    return [{"loc": loc, "msg": str(exc), "type": "value_error"}] if loc else []


def _ready_dataset(d: DatasetRecord | None, id_: Any, field: str) -> DatasetRecord:
    if d is None:
        raise Invalid(f"{field}: no dataset {id_}")
    if d.status == AssetStatus.validating:
        raise Conflict(f"{field}: dataset {id_} is still being validated; retry in a moment")
    if d.status == AssetStatus.invalid:
        raise Invalid(f"{field}: dataset {id_} is invalid: {d.error}")
    return d


def _teacher(
    session: Session,
    tenant: Tenant,
    body: JobCreate,
    config: DistillConfig,
    data: DatasetRecord,
    at: Callable[[Loc], Loc],
) -> Teacher | None:
    field = _dotted(at, "teacher_id")
    if not config.uses_teacher:
        if body.teacher_id is not None:
            raise Invalid(f'{field}: method "scratch" trains without a teacher; send null')
        return None
    if body.teacher_id is None:
        raise Invalid(f"{field}: method {config.method!r} needs a teacher")
    teacher = TeacherRepository(session, tenant.id).get(body.teacher_id)
    if teacher is None:
        raise Invalid(f"{field}: no teacher {body.teacher_id}")
    if teacher.status == AssetStatus.validating:
        raise Conflict(f"teacher {teacher.id} is still being validated; retry in a moment")
    if teacher.status == AssetStatus.invalid:
        raise Invalid(f"{field}: teacher {teacher.id} is invalid: {teacher.error}")
    if list(teacher.input_shape) != list(data.input_shape or []):
        raise Invalid(
            f"teacher takes input {teacher.input_shape}, the dataset has {data.input_shape}"
        )
    if teacher.num_classes != len(data.classes or []):
        raise Invalid(
            f"teacher has {teacher.num_classes} classes, the dataset {len(data.classes or [])}"
        )
    return teacher


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
        choices=j.choices or {},
        sweep_id=j.sweep_id,
        error=error,
        warnings=j.warnings or [],
        attempts=j.attempts,
        cancel_requested=j.cancel_requested,
        created_at=j.created_at,
        updated_at=j.updated_at,
        started_at=j.started_at,
        finished_at=j.finished_at,
    )
