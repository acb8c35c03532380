"""The aggregates ``GET /metrics`` reports, read at scrape time: a handful of ``GROUP BY``
queries, never a row per job. Portable between Postgres and SQLite (embedded mode).

Durations are cumulative histograms over every job the table holds (what Prometheus's
``rate()`` and ``histogram_quantile()`` expect of a histogram), computed in SQL so that only
one row per label comes back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from kdcore.contract import StageName
from store.models import CacheEntry, Job, JobEvent, JobStatus

FINAL = (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)
STAGES: tuple[StageName, ...] = ("hint", "kd", "scratch")
# The worker writes each stage's training time into a succeeded job's metrics under this
# prefix (worker/runner.py, from report.json's stage_seconds).
STAGE_SECONDS = "stage_seconds_"


@dataclass(frozen=True)
class Histogram:
    """``buckets[i]``: how many values are ``<= bounds[i]`` (cumulative); ``count`` and
    ``total`` over all values."""

    buckets: tuple[int, ...]
    count: int
    total: float


@dataclass(frozen=True)
class RunningHeartbeats:
    running: int
    stale: int  # heartbeat older than the reaper's timeout: the reaper will requeue them
    oldest: datetime | None  # the oldest heartbeat of a running job


@dataclass(frozen=True)
class CacheTotals:
    entries: int
    bytes: int
    hits: int


@dataclass
class MetricsRepository:
    session: Session

    def jobs_by_status(self) -> dict[str, int]:
        rows = self.session.execute(select(Job.status, func.count()).group_by(Job.status))
        return {str(status): int(n) for status, n in rows}

    def transitions(self) -> dict[str, int]:
        """State events (``job_events.kind = "state"``) by their new status."""
        rows = self.session.execute(
            select(JobEvent.status, func.count())
            .where(JobEvent.kind == "state", JobEvent.status.is_not(None))
            .group_by(JobEvent.status)
        )
        return {str(status): int(n) for status, n in rows}

    def job_durations(self, bounds: Sequence[float]) -> dict[str, Histogram]:
        """Final jobs that ran, by status: ``finished_at - started_at`` (the first start to
        the end, retries included)."""
        seconds = self._seconds_between(Job.started_at, Job.finished_at)
        q = (
            select(Job.status, *_histogram_columns(seconds, bounds))
            .where(Job.status.in_(FINAL), Job.started_at.is_not(None), Job.finished_at.is_not(None))
            .group_by(Job.status)
        )
        return {str(row[0]): _histogram(row[1:], len(bounds)) for row in self.session.execute(q)}

    def stage_durations(self, bounds: Sequence[float]) -> dict[str, Histogram]:
        """Succeeded jobs' training time per stage, as the engine measured it."""
        # Each value is read from the JSON once, in a subquery, then aggregated.
        values = (
            select(*(Job.metrics[STAGE_SECONDS + s].as_float().label(s) for s in STAGES))
            .where(Job.status == JobStatus.succeeded)
            .subquery()
        )
        columns: list[ColumnElement[Any]] = []
        for stage in STAGES:
            columns += _histogram_columns(values.c[stage], bounds)
        row = self.session.execute(select(*columns)).one()
        width = len(bounds) + 2
        return {
            stage: _histogram(row[i * width : (i + 1) * width], len(bounds))
            for i, stage in enumerate(STAGES)
        }

    def running_heartbeats(self, *, stale_before: datetime) -> RunningHeartbeats:
        count, stale, oldest = self.session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(case((Job.heartbeat_at < stale_before, 1), else_=0)), 0),
                func.min(Job.heartbeat_at),
            ).where(Job.status == JobStatus.running)
        ).one()
        return RunningHeartbeats(running=int(count), stale=int(stale), oldest=oldest)

    def cache_totals(self) -> CacheTotals:
        entries, size, hits = self.session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(CacheEntry.size), 0),
                func.coalesce(func.sum(CacheEntry.hits), 0),
            )
        ).one()
        return CacheTotals(entries=int(entries), bytes=int(size), hits=int(hits))

    def _seconds_between(self, start: Any, end: Any) -> ColumnElement[float]:
        if self.session.get_bind().dialect.name == "sqlite":
            # SQLite keeps datetimes as text; julianday() reads them (fractions of a day).
            return cast((func.julianday(end) - func.julianday(start)) * 86400.0, Float)
        return cast(func.extract("epoch", end - start), Float)


def _histogram_columns(value: ColumnElement[Any], bounds: Sequence[float]) -> list[Any]:
    """``count(value)``, ``sum(value)``, then one cumulative count per bound (NULLs, i.e. rows
    without the value, count nowhere)."""
    return [
        func.count(value),
        func.coalesce(func.sum(value), 0.0),
        *(func.coalesce(func.sum(case((value <= bound, 1), else_=0)), 0) for bound in bounds),
    ]


def _histogram(values: Sequence[Any], n_bounds: int) -> Histogram:
    count, total, *buckets = values
    assert len(buckets) == n_bounds
    return Histogram(buckets=tuple(int(b) for b in buckets), count=int(count), total=float(total))
