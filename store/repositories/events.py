"""A job's event log (``job_events``): every state change, every epoch's metrics and the
final report, numbered per job 1, 2, ... without gaps.

Writers call :func:`append` in the transaction that changes the job row, *after* the
guarded UPDATE (or INSERT) of that row, and only when it changed a row: the row lock the
UPDATE took (Postgres) or the database write lock (SQLite) serializes writers of one job,
so the next ``seq`` is the largest plus one, and a write that lost its lease (it matched
no row) writes no event either. Readers page through a job's events by ``seq``
(:func:`after`); the unique ``(job_id, seq)`` constraint is their index.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from store.models import Job, JobEvent, JobStatus, utcnow

EventKind = Literal["state", "epoch", "report"]


def append(
    session: Session,
    job_id: uuid.UUID,
    kind: EventKind,
    data: Mapping[str, Any],
    status: JobStatus | None = None,
    *,
    now: datetime | None = None,
) -> int:
    """Add the job's next event and return its ``seq``; call it after the write that
    changed the job row, in the same transaction (see the module's docstring)."""
    last = session.scalar(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id))
    seq = (last or 0) + 1
    session.execute(
        insert(JobEvent).values(
            job_id=job_id,
            seq=seq,
            kind=kind,
            status=status.value if status is not None else None,
            data=dict(data),
            created_at=now or utcnow(),
        )
    )
    return seq


def state(
    session: Session,
    job_id: uuid.UUID,
    status: JobStatus,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
    now: datetime | None = None,
    **extra: Any,
) -> int:
    """A state event: ``{"status", "error": {"code", "message"} | null, **extra}``."""
    error = {"code": error_code, "message": error_message or ""} if error_code else None
    data = {"status": status.value, "error": error, **extra}
    return append(session, job_id, "state", data, status, now=now)


def queued(session: Session, jobs: Sequence[Job]) -> None:
    """The first event of new jobs (already flushed): ``queued``."""
    for job in jobs:
        state(session, job.id, JobStatus.queued, reason="submitted")


@dataclass(frozen=True)
class Batch:
    """What a reader saw at one moment: the job's status, then its events after a seq."""

    status: JobStatus | None  # None: no such job
    events: list[JobEvent]


def after(session: Session, job_id: uuid.UUID, *, after: int, limit: int) -> Batch:
    """The job's status, then up to ``limit`` of its events with ``seq > after``, in order.

    The status is read first: if it is final, every event of the job was committed with or
    before it, so the events read next include them all (a later statement sees at least
    what an earlier one saw, under Postgres' READ COMMITTED and SQLite alike).
    """
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    events = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.seq > after)
        .order_by(JobEvent.seq)
        .limit(limit)
    )
    return Batch(status=status, events=list(events))
