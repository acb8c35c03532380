"""The SQL of running a job: claim, heartbeat, progress, metrics, the final state, reaping.

A running attempt is identified by its *lease*, a random token written when it claims the
job. Every write an attempt makes afterwards is guarded by ``lease = :lease AND status =
'running'``: once the reaper has given the job to another attempt (or the job ended), the
old attempt's writes match no row, and it learns that it lost the job.

A write that changes the job's state, an epoch's metrics or the final report appends the
job's next event (:mod:`store.repositories.events`) in the same transaction, only when its
guarded UPDATE changed the row: a write that lost its lease leaves no event either.

Each method does its work on the session it was built with and never commits: the caller
owns the transaction (``store.db.transaction``). Times are computed in Python and compared
in SQL through bound parameters, which behaves the same on Postgres (``timestamptz``) and
SQLite (naive UTC strings).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    DateTime,
    and_,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from store.models import Artifact, Job, JobStatus, MetricPoint
from store.repositories import events

WORKER_LOST = "worker_lost"


class Claim(enum.StrEnum):
    """What :meth:`RunRepository.claim` did."""

    claimed = "claimed"  # this attempt owns the job now
    exhausted = "exhausted"  # the job was claimable but out of attempts: marked failed
    skipped = "skipped"  # another live attempt owns it, or it is final / canceled / unknown


@dataclass(frozen=True)
class LeaseState:
    """The answer to a guarded write: whether the lease still holds, and whether the user
    asked to cancel."""

    held: bool
    cancel_requested: bool = False


LOST = LeaseState(held=False)


@dataclass(frozen=True)
class NewArtifact:
    name: str
    uri: str
    size: int
    sha256: str


def worker_lost_message(attempts: int) -> str:
    return (
        f"the worker running this job stopped responding {attempts} times (killed, out of "
        "memory, or cut off from the database); check the worker logs, then submit the job "
        "again (a smaller batch_size needs less memory)"
    )


class RunRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def _execute(self, stmt: Any) -> int:
        result = self.session.execute(stmt, execution_options={"synchronize_session": False})
        return cast(CursorResult[Any], result).rowcount

    # -- claiming ----------------------------------------------------------------------------

    @staticmethod
    def _claimable(job_id: uuid.UUID, stale_before: datetime) -> ColumnElement[bool]:
        return and_(
            Job.id == job_id,
            or_(
                Job.status == JobStatus.queued,
                and_(Job.status == JobStatus.running, Job.heartbeat_at < stale_before),
            ),
        )

    def claim(
        self,
        job_id: uuid.UUID,
        *,
        lease: str,
        now: datetime,
        stale_before: datetime,
        max_attempts: int,
    ) -> Claim:
        """Take the job if it is queued, or running with a heartbeat older than
        ``stale_before`` (its worker died); one compare-and-set, so of concurrent claims
        exactly one wins."""
        claimable = self._claimable(job_id, stale_before)
        taken = self._execute(
            update(Job)
            .where(claimable, Job.attempts < max_attempts)
            .values(
                status=JobStatus.running,
                attempts=Job.attempts + 1,
                lease=lease,
                heartbeat_at=now,
                started_at=func.coalesce(Job.started_at, literal(now, DateTime(timezone=True))),
                updated_at=now,
            )
        )
        if taken:
            attempt = self.session.scalar(select(Job.attempts).where(Job.id == job_id))
            events.state(self.session, job_id, JobStatus.running, now=now, attempt=attempt)
            return Claim.claimed
        message = worker_lost_message(max_attempts)
        failed = self._execute(
            update(Job)
            .where(claimable, Job.attempts >= max_attempts)
            .values(
                status=JobStatus.failed,
                error_code=WORKER_LOST,
                error_message=message,
                lease=None,
                finished_at=now,
                updated_at=now,
            )
        )
        if not failed:
            return Claim.skipped
        events.state(
            self.session,
            job_id,
            JobStatus.failed,
            error_code=WORKER_LOST,
            error_message=message,
            now=now,
        )
        return Claim.exhausted

    def get(self, job_id: uuid.UUID) -> Job | None:
        return self.session.get(Job, job_id)

    # -- writes of a running attempt ------------------------------------------------------

    def _guarded(self, job_id: uuid.UUID, lease: str) -> ColumnElement[bool]:
        return and_(Job.id == job_id, Job.lease == lease, Job.status == JobStatus.running)

    def touch(self, job_id: uuid.UUID, *, lease: str, now: datetime, **values: Any) -> LeaseState:
        """Heartbeat (plus any progress ``values``) if ``lease`` still holds the job."""
        if not self._execute(
            update(Job)
            .where(self._guarded(job_id, lease))
            .values(heartbeat_at=now, updated_at=now, **values)
        ):
            return LOST
        cancel = self.session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
        return LeaseState(held=True, cancel_requested=bool(cancel))

    def record_epoch(
        self,
        job_id: uuid.UUID,
        *,
        lease: str,
        now: datetime,
        step: int,
        points: Mapping[str, float],
        **values: Any,
    ) -> LeaseState:
        """Progress plus one metric point per key at ``step`` (epochs completed so far),
        and an ``epoch`` event.

        Points at ``step`` or later are replaced: an attempt that resumes from an earlier
        checkpoint redoes those epochs, and its values are the ones the weights match. Its
        events are appended: the log keeps both attempts' epochs, after the requeue.
        """
        state = self.touch(job_id, lease=lease, now=now, **values)
        if not state.held:
            return state
        self._execute(
            delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step >= step)
        )
        if points:
            self.session.execute(
                insert(MetricPoint),
                [
                    {"job_id": job_id, "key": k, "step": step, "value": float(v), "created_at": now}
                    for k, v in points.items()
                ],
            )
        data = {key: values.get(key) for key in ("stage", "epoch", "progress")}
        data |= {"step": step, "metrics": {k: float(v) for k, v in points.items()}}
        events.append(self.session, job_id, "epoch", data, now=now)
        return state

    def finish(
        self,
        job_id: uuid.UUID,
        *,
        lease: str,
        status: JobStatus,
        now: datetime,
        error_code: str | None = None,
        error_message: str | None = None,
        **values: Any,
    ) -> bool:
        """Write a final state (and its event), if ``lease`` still holds the job."""
        assert status.final
        if not self._execute(
            update(Job)
            .where(self._guarded(job_id, lease))
            .values(
                status=status,
                error_code=error_code,
                error_message=error_message,
                lease=None,
                finished_at=now,
                updated_at=now,
                **values,
            )
        ):
            return False
        events.state(
            self.session,
            job_id,
            status,
            error_code=error_code,
            error_message=error_message,
            now=now,
        )
        return True

    def succeed(
        self,
        job_id: uuid.UUID,
        *,
        lease: str,
        now: datetime,
        artifacts: Sequence[NewArtifact],
        metrics: dict[str, Any],
        choices: dict[str, Any] | None = None,
        warnings: Sequence[str] = (),
    ) -> bool:
        """Mark the job succeeded and list its artifacts (replacing an earlier attempt's);
        ``choices``: the automatic choices the run resolved, ``warnings`` what it could not
        do but did not fail for (both ``report.json``'s). Events: the ``succeeded`` state,
        then a ``report`` (metrics, choices, warnings, artifact names)."""
        if not self.finish(
            job_id,
            lease=lease,
            status=JobStatus.succeeded,
            now=now,
            progress=1.0,
            metrics=metrics,
            choices=choices or {},
            warnings=list(warnings),
        ):
            return False
        self._execute(delete(Artifact).where(Artifact.job_id == job_id))
        if artifacts:
            self.session.execute(
                insert(Artifact),
                [
                    {
                        "id": uuid.uuid4(),
                        "job_id": job_id,
                        "name": a.name,
                        "uri": a.uri,
                        "size": a.size,
                        "sha256": a.sha256,
                        "created_at": now,
                    }
                    for a in artifacts
                ],
            )
        report = {
            "metrics": metrics,
            "choices": choices or {},
            "warnings": list(warnings),
            "artifacts": sorted(a.name for a in artifacts),
        }
        events.append(self.session, job_id, "report", report, now=now)
        return True

    # -- reaping ----------------------------------------------------------------------------

    def stale_running(self, *, stale_before: datetime, limit: int = 100) -> list[uuid.UUID]:
        """Running jobs whose worker has not sent a heartbeat since ``stale_before``."""
        return list(
            self.session.scalars(
                select(Job.id)
                .where(Job.status == JobStatus.running, Job.heartbeat_at < stale_before)
                .order_by(Job.heartbeat_at)
                .limit(limit)
            )
        )

    def requeue(
        self, job_id: uuid.UUID, *, stale_before: datetime, max_attempts: int, now: datetime
    ) -> bool:
        """Hand a stale job back to the queue, if it has attempts left (compare-and-set)."""
        if not self._execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status == JobStatus.running,
                Job.heartbeat_at < stale_before,
                Job.attempts < max_attempts,
            )
            .values(status=JobStatus.queued, lease=None, updated_at=now)
        ):
            return False
        events.state(self.session, job_id, JobStatus.queued, now=now, reason=WORKER_LOST)
        return True

    def fail_lost(
        self, job_id: uuid.UUID, *, stale_before: datetime, max_attempts: int, now: datetime
    ) -> bool:
        """Fail a stale job that has used all its attempts (compare-and-set)."""
        attempts = self.session.scalar(select(Job.attempts).where(Job.id == job_id))
        message = worker_lost_message(attempts or max_attempts)
        if not self._execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status == JobStatus.running,
                Job.heartbeat_at < stale_before,
                Job.attempts >= max_attempts,
            )
            .values(
                status=JobStatus.failed,
                error_code=WORKER_LOST,
                error_message=message,
                lease=None,
                finished_at=now,
                updated_at=now,
            )
        ):
            return False
        events.state(
            self.session,
            job_id,
            JobStatus.failed,
            error_code=WORKER_LOST,
            error_message=message,
            now=now,
        )
        return True

    def unclaimed(self, *, queued_before: datetime, limit: int = 100) -> list[uuid.UUID]:
        """Queued jobs untouched since ``queued_before``: their message may have been lost."""
        return list(
            self.session.scalars(
                select(Job.id)
                .where(Job.status == JobStatus.queued, Job.updated_at < queued_before)
                .order_by(Job.updated_at)
                .limit(limit)
            )
        )

    def touch_queued(self, job_id: uuid.UUID, *, queued_before: datetime, now: datetime) -> bool:
        """Restart a queued job's clock before its message is sent again (compare-and-set),
        so concurrent reapers send it once and the next resend waits a full period."""
        return bool(
            self._execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.status == JobStatus.queued,
                    Job.updated_at < queued_before,
                )
                .values(updated_at=now)
            )
        )
