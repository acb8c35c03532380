"""A tenant's work in flight: the counts its limits are checked against, taken atomically,
and the rank that orders its work on the broker (:func:`store.queue.fair_priority`).

Every check that counts a tenant's rows and then adds one (a job, a sweep's points, an
upload's slot, a teacher or dataset to validate) first takes the tenant's row lock
(:func:`lock_tenant`) in the same transaction: concurrent requests of one tenant take their
turn, each one counts what the others added, and none gets past a limit. The lock is
``FOR NO KEY UPDATE``: it does not wait for inserts that merely reference the tenant (they
take ``FOR KEY SHARE``), only for another limit check. SQLite has no row locks: in embedded
mode (one machine, one user) the checks are not atomic.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.orm import Session

from store.models import AssetStatus, Job, JobStatus, Tenant, UploadSlot
from store.repositories.catalog import UPLOADS, UploadModel

PENDING_JOB = (JobStatus.queued, JobStatus.running)


def lock_tenant(session: Session, tenant_id: uuid.UUID) -> Tenant:
    """The tenant's row, locked until the transaction ends, with its limits read afresh."""
    return session.scalars(
        select(Tenant)
        .where(Tenant.id == tenant_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).one()


# -- jobs -------------------------------------------------------------------------------------


def pending_jobs(session: Session, tenant_id: uuid.UUID) -> int:
    """The tenant's queued and running jobs, sweep points included."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == tenant_id, Job.status.in_(PENDING_JOB))
        )
        or 0
    )


def job_rank(session: Session, job_id: uuid.UUID) -> int:
    """How many of its tenant's queued and running jobs came before this one (0 when it is
    unknown or no longer pending)."""
    job = session.get(Job, job_id)
    if job is None or job.status not in PENDING_JOB:
        return 0
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(
                Job.tenant_id == job.tenant_id,
                Job.status.in_(PENDING_JOB),
                tuple_(Job.created_at, Job.id) < tuple_(job.created_at, job.id),
            )
        )
        or 0
    )


# -- uploads: validations and slots -------------------------------------------------------------


def validating(session: Session, tenant_id: uuid.UUID, *, before: datetime | None = None) -> int:
    """The tenant's teachers and datasets waiting for (or in) validation, deleted ones too
    (their check still runs); with ``before``, only those created earlier."""
    total = 0
    for model in UPLOADS:
        q = (
            select(func.count())
            .select_from(model)
            .where(model.tenant_id == tenant_id, model.status == AssetStatus.validating)
        )
        if before is not None:
            q = q.where(model.created_at < before)
        total += session.scalar(q) or 0
    return total


def validation_rank(session: Session, model: UploadModel, row_id: uuid.UUID) -> int:
    """How many of its tenant's validations came before this upload's."""
    found = session.execute(
        select(model.tenant_id, model.created_at).where(
            model.id == row_id, model.status == AssetStatus.validating
        )
    ).first()
    if found is None:
        return 0
    return validating(session, found.tenant_id, before=found.created_at)


def live_upload_slots(session: Session, tenant_id: uuid.UUID, *, now: datetime) -> int:
    """The tenant's uploads in progress; expired slots (a killed API process's) are dropped."""
    session.execute(
        delete(UploadSlot).where(UploadSlot.tenant_id == tenant_id, UploadSlot.expires_at <= now)
    )
    return (
        session.scalar(
            select(func.count()).select_from(UploadSlot).where(UploadSlot.tenant_id == tenant_id)
        )
        or 0
    )


def take_upload_slot(
    session: Session, tenant_id: uuid.UUID, *, now: datetime, ttl: timedelta
) -> uuid.UUID:
    slot = UploadSlot(tenant_id=tenant_id, expires_at=now + ttl, created_at=now)
    session.add(slot)
    session.flush()
    return slot.id


def renew_upload_slot(
    session: Session, slot_id: uuid.UUID, *, now: datetime, ttl: timedelta
) -> None:
    session.execute(update(UploadSlot).where(UploadSlot.id == slot_id).values(expires_at=now + ttl))


def release_upload_slot(session: Session, slot_id: uuid.UUID) -> None:
    session.execute(delete(UploadSlot).where(UploadSlot.id == slot_id))
