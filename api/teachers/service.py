"""Teachers: register an upload or a finished job's student, queue its validation."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from api.kit.catalog import Catalog
from api.kit.cost import check_model
from api.kit.errors import Conflict, Invalid, NotFound
from api.kit.uploads import record_blob
from kdcore.contract import SpecError, model_cost, parse_arch
from store.blobs import BlobStore, StoredObject
from store.models import JobStatus, Teacher, Tenant
from store.queue import VALIDATE_TEACHER
from store.repositories.catalog import DatasetRepository, TeacherRepository, find_or_add_blob
from store.repositories.jobs import JobRepository
from store.settings import Settings

from .schemas import TeacherList, TeacherPublic


def check_arch(
    arch: dict[str, Any] | None,
    *,
    input_shape: list[int],
    num_classes: int,
    settings: Settings,
) -> dict[str, Any] | None:
    """The declared architecture, parsed, taking ``input_shape`` to ``num_classes`` logits,
    and within the service's model limits (a worker would build it to validate the upload).

    Raises:
        Invalid: naming the problem (:class:`~api.kit.errors.OverLimit`: a limit).
    """
    if arch is None:
        return None
    try:
        spec = parse_arch(arch)
    except SpecError as exc:
        raise Invalid(str(exc)) from exc
    try:
        cost = model_cost(spec, tuple(input_shape), num_classes)
    except SpecError as exc:
        raise Invalid(f"arch: {exc}") from exc
    check_model(
        settings,
        field="arch",
        what="the teacher",
        params=cost.params,
        macs=cost.macs,
        instead="a smaller teacher",
    )
    return spec.model_dump(mode="json")


catalog = Catalog(
    what="teacher",
    repository=TeacherRepository,
    public=TeacherPublic,
    page=TeacherList,
    task=VALIDATE_TEACHER,
)


def create_from_upload(
    session: Session,
    tenant: Tenant,
    *,
    store: BlobStore,
    settings: Settings,
    obj: StoredObject,
    arch: dict[str, Any] | None,
    input_shape: list[int],
    num_classes: int,
    name: str,
) -> Teacher:
    if num_classes < 2:
        raise Invalid("num_classes must be at least 2")
    row = Teacher(
        tenant_id=tenant.id,
        name=name,
        arch=arch,
        input_shape=input_shape,
        num_classes=num_classes,
    )
    return catalog.add(session, settings, row, record_blob(session, store, tenant, obj))


def create_from_job(
    session: Session, *, settings: Settings, tenant: Tenant, job_id: uuid.UUID, name: str | None
) -> Teacher:
    jobs = JobRepository(session, tenant.id)
    job = jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if job.status != JobStatus.succeeded:
        raise Conflict(f"job {job_id} is {job.status}; only a succeeded job can become a teacher")
    artifact = jobs.artifact(job.id, "student.safetensors")
    if artifact is None:
        raise Conflict(f"job {job_id} has no exported student to promote")
    # What the student takes and gives is its training data's: the dataset's row says it,
    # and is kept for this when the dataset is deleted.
    dataset = DatasetRepository(session, tenant.id).get(job.dataset_id, deleted=True)
    if dataset is None or dataset.input_shape is None or not dataset.classes:
        raise Conflict(
            f"job {job_id}'s dataset {job.dataset_id} no longer records its input shape and "
            "classes, which the teacher needs; upload the student as a teacher instead "
            "(POST /v1/teachers with its student.safetensors, arch, input_shape, num_classes)"
        )
    # The job keeps its artifact: the teacher shares the object, never deletes it.
    blob, _ = find_or_add_blob(
        session, tenant.id, uri=artifact.uri, size=artifact.size, sha256=artifact.sha256
    )
    row = Teacher(
        tenant_id=tenant.id,
        name=name or job.name or f"from job {job.id}",
        arch=job.student,
        input_shape=list(dataset.input_shape),
        num_classes=len(dataset.classes or []),
        source_job_id=job.id,
    )
    return catalog.add(session, settings, row, blob)
