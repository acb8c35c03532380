"""Sweeps as the API sees them: submit, read, list; their points are jobs
(:class:`store.repositories.jobs.JobRepository` cancels them)."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Job, MetricPoint, Sweep
from store.repositories.common import page


@dataclass
class SweepRepository:
    session: Session
    tenant_id: uuid.UUID

    def get(self, sweep_id: uuid.UUID) -> Sweep | None:
        return self.session.scalars(
            select(Sweep).where(Sweep.id == sweep_id, Sweep.tenant_id == self.tenant_id)
        ).first()

    def by_idempotency_key(self, key: str) -> Sweep | None:
        return self.session.scalars(
            select(Sweep).where(Sweep.tenant_id == self.tenant_id, Sweep.idempotency_key == key)
        ).first()

    def list_page(self, *, after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[Sweep]:
        q = select(Sweep).where(Sweep.tenant_id == self.tenant_id)
        return list(self.session.scalars(page(q, Sweep, after=after, limit=limit)))

    def add(self, sweep: Sweep, points: Collection[Job]) -> Sweep:
        """The sweep, then its points' jobs (one flush each: the jobs refer to the sweep)."""
        self.session.add(sweep)
        self.session.flush()
        self.session.add_all(points)
        self.session.flush()
        return sweep

    def jobs(self, sweep_ids: Collection[uuid.UUID]) -> list[Job]:
        """The jobs of these sweeps (their points), in no particular order."""
        if not sweep_ids:
            return []
        return list(
            self.session.scalars(
                select(Job).where(Job.tenant_id == self.tenant_id, Job.sweep_id.in_(sweep_ids))
            )
        )

    def metric_points(
        self, job_ids: Collection[uuid.UUID], keys: Collection[str]
    ) -> list[MetricPoint]:
        """The recorded points of ``keys`` of these jobs, by job, then step."""
        if not job_ids:
            return []
        return list(
            self.session.scalars(
                select(MetricPoint)
                .where(MetricPoint.job_id.in_(job_ids), MetricPoint.key.in_(keys))
                .order_by(MetricPoint.job_id, MetricPoint.step, MetricPoint.id)
            )
        )
