"""Teachers: register an upload or a finished job's student, queue its validation."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from api.kit.deps import defer_task
from api.kit.errors import Conflict, Invalid, NotFound
from api.kit.uploads import record_blob
from kdcore.specs import SpecError, parse_arch
from store.blobs import BlobStore, StoredObject
from store.models import Blob, JobStatus, Teacher, Tenant
from store.queue import VALIDATE_TEACHER
from store.repositories.catalog import DatasetRepository, TeacherRepository
from store.repositories.jobs import JobRepository

from .schemas import LayerOut, TeacherPublic


def check_arch(arch: dict[str, Any] | None) -> dict[str, Any] | None:
    if arch is None:
        return None
    try:
        return parse_arch(arch).model_dump(mode="json")
    except SpecError as exc:
        raise Invalid(str(exc)) from exc


def create_from_upload(
    session: Session,
    store: BlobStore,
    *,
    tenant: Tenant,
    obj: StoredObject,
    arch: dict[str, Any] | None,
    input_shape: list[int],
    num_classes: int,
    name: str,
) -> Teacher:
    if num_classes < 2:
        raise Invalid("num_classes must be at least 2")
    blob = record_blob(session, store, tenant, obj)
    teacher = TeacherRepository(session, tenant.id).add(
        Teacher(
            tenant_id=tenant.id,
            name=name,
            blob_id=blob.id,
            arch=arch,
            input_shape=input_shape,
            num_classes=num_classes,
        )
    )
    teacher.blob = blob
    defer_task(session, VALIDATE_TEACHER, [str(teacher.id)])
    return teacher


def create_from_job(
    session: Session, *, tenant: Tenant, job_id: uuid.UUID, name: str | None
) -> Teacher:
    jobs = JobRepository(session, tenant.id)
    job = jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if job.status != JobStatus.succeeded:
        raise Conflict(f"job {job_id} is {job.status}; only a succeeded job can become a teacher")
    artifact = jobs.artifact(job.id, "student.safetensors")
    dataset = DatasetRepository(session, tenant.id).get(job.dataset_id)
    if artifact is None or dataset is None or dataset.input_shape is None:
        raise Conflict(f"job {job_id} has no exported student to promote")
    blob = _blob_for(session, tenant, artifact.uri, artifact.size, artifact.sha256)
    teacher = TeacherRepository(session, tenant.id).add(
        Teacher(
            tenant_id=tenant.id,
            name=name or job.name or f"from job {job.id}",
            blob_id=blob.id,
            arch=job.student,
            input_shape=list(dataset.input_shape),
            num_classes=len(dataset.classes or []),
            source_job_id=job.id,
        )
    )
    teacher.blob = blob
    defer_task(session, VALIDATE_TEACHER, [str(teacher.id)])
    return teacher


def _blob_for(session: Session, tenant: Tenant, uri: str, size: int, sha256: str) -> Blob:
    from sqlalchemy import select

    found = session.scalars(
        select(Blob).where(Blob.tenant_id == tenant.id, Blob.sha256 == sha256)
    ).first()
    if found is not None:
        return found
    blob = Blob(tenant_id=tenant.id, uri=uri, size=size, sha256=sha256)
    session.add(blob)
    session.flush()
    return blob


def to_public(t: Teacher) -> TeacherPublic:
    return TeacherPublic(
        id=t.id,
        name=t.name,
        status=t.status,
        error=t.error,
        format=t.format,
        arch=t.arch,
        input_shape=list(t.input_shape),
        num_classes=t.num_classes,
        layers=[LayerOut(**layer) for layer in t.layers] if t.layers is not None else None,
        params=t.params,
        macs=t.macs,
        size=t.blob.size if t.blob else None,
        sha256=t.blob.sha256 if t.blob else None,
        source_job_id=t.source_job_id,
        created_at=t.created_at,
        updated_at=t.updated_at,
    )
