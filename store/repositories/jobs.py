"""Jobs as the API sees them: submit, read, list, cancel, metrics and artifacts.
The worker's side (claim, heartbeat, finish) is in :mod:`store.repositories.runs`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from store.models import Artifact, Job, JobStatus, MetricPoint, utcnow
from store.repositories import events
from store.repositories.common import page


@dataclass
class JobRepository:
    session: Session
    tenant_id: uuid.UUID

    def get(self, job_id: uuid.UUID) -> Job | None:
        return self.session.scalars(
            select(Job).where(Job.id == job_id, Job.tenant_id == self.tenant_id)
        ).first()

    def by_idempotency_key(self, key: str) -> Job | None:
        return self.session.scalars(
            select(Job).where(Job.tenant_id == self.tenant_id, Job.idempotency_key == key)
        ).first()

    def list_page(
        self, *, status: JobStatus | None, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[Job]:
        q = select(Job).where(Job.tenant_id == self.tenant_id)
        if status is not None:
            q = q.where(Job.status == status)
        return list(self.session.scalars(page(q, Job, after=after, limit=limit)))

    def add(self, job: Job) -> Job:
        self.session.add(job)
        self.session.flush()
        return job

    def active_count(self, *, in_sweeps: bool = False) -> int:
        """Queued and running jobs: plain ones, or (``in_sweeps``) the points of sweeps;
        each kind has a limit of its own."""
        in_sweep = Job.sweep_id.is_not(None) if in_sweeps else Job.sweep_id.is_(None)
        return (
            self.session.scalar(
                select(func.count())
                .select_from(Job)
                .where(
                    Job.tenant_id == self.tenant_id,
                    Job.status.in_([JobStatus.queued, JobStatus.running]),
                    in_sweep,
                )
            )
            or 0
        )

    def cancel_queued(self, job_id: uuid.UUID) -> bool:
        """Queued → canceled at once (compare-and-set: a worker may be claiming it), with
        its state event."""
        now = utcnow()
        message = "canceled before it started"
        result = self.session.execute(
            update(Job)
            .where(
                Job.id == job_id, Job.tenant_id == self.tenant_id, Job.status == JobStatus.queued
            )
            .values(
                status=JobStatus.canceled,
                finished_at=now,
                updated_at=now,
                error_code="canceled",
                error_message=message,
            )
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            return False
        events.state(
            self.session,
            job_id,
            JobStatus.canceled,
            error_code="canceled",
            error_message=message,
            now=now,
        )
        return True

    def request_cancel(self, job_id: uuid.UUID) -> bool:
        """Running → ask the worker to stop; it polls this flag between steps."""
        result = self.session.execute(
            update(Job)
            .where(
                Job.id == job_id, Job.tenant_id == self.tenant_id, Job.status == JobStatus.running
            )
            .values(cancel_requested=True, updated_at=utcnow())
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def metric_points(self, job_id: uuid.UUID) -> list[MetricPoint]:
        return list(
            self.session.scalars(
                select(MetricPoint)
                .where(MetricPoint.job_id == job_id)
                .order_by(MetricPoint.key, MetricPoint.step, MetricPoint.id)
            )
        )

    def artifacts(self, job_id: uuid.UUID) -> list[Artifact]:
        return list(
            self.session.scalars(
                select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)
            )
        )

    def artifact(self, job_id: uuid.UUID, name: str) -> Artifact | None:
        return self.session.scalars(
            select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)
        ).first()
