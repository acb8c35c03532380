"""What the database and the broker hold, read when Prometheus scrapes (a custom collector).

Read at scrape time rather than counted in a process, so the figures are the same whichever
API process answers and wherever the workers run. A scrape costs a few aggregate queries
(``store.repositories.metrics``) on a connection of its own, and one pipelined Redis round
trip; each source gives up after ``KDSERVE_METRICS_TIMEOUT_S``. A source that does not answer
is reported as ``kdserve_database_up 0`` or ``kdserve_broker_up 0`` and its figures are left
out: the scrape itself still answers, with the request metrics.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from store import backlog
from store.db import make_engine
from store.models import JobStatus
from store.repositories.metrics import FINAL, STAGES, Histogram, MetricsRepository
from store.settings import Settings

log = logging.getLogger(__name__)

# Seconds: jobs and stages last from seconds (the digits demo) to a day (the time limit).
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)


def metrics_engine(settings: Settings) -> Engine:
    """A small pool of its own, so a scrape never waits behind requests for a connection,
    with connect and statement timeouts (Postgres) so it never waits long."""
    url = settings.db_url
    if url.startswith("sqlite"):
        return make_engine(url, pool_size=1)
    timeout = settings.metrics_timeout_s
    return create_engine(
        url,
        pool_size=1,
        max_overflow=1,
        pool_timeout=timeout,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": max(1, math.ceil(timeout)),
            "options": f"-c statement_timeout={int(timeout * 1000)}",
        },
    )


class StateCollector(Collector):
    """Database and broker figures, collected on each scrape. (``Collector.describe`` returns
    nothing, so registering one runs no query.)"""

    def __init__(self, settings: Settings, engine: Engine, queues: Sequence[str]) -> None:
        self.settings, self.engine, self.queues = settings, engine, list(queues)
        self.redis: redis.Redis | None = (
            backlog.redis_client(settings.broker, timeout_s=settings.metrics_timeout_s)
            if backlog.is_redis(settings.broker)
            else None
        )

    def collect(self) -> Iterator[Metric]:
        yield from self._database()
        yield from self._broker()

    def close(self) -> None:
        self.engine.dispose()
        if self.redis is not None:
            self.redis.close()

    # -- database --------------------------------------------------------------------------

    def _database(self) -> Iterator[Metric]:
        started = time.perf_counter()
        found: list[Metric] = []
        try:
            with Session(self.engine) as session, session.begin():
                found = list(self._from_database(MetricsRepository(session)))
            up = True
        except Exception as exc:  # any failure: report it down, keep the scrape answering
            log.warning("metrics: the database did not answer: %s", _reason(exc))
            found, up = [], False
        yield _gauge("kdserve_database_up", "1 if this scrape read the database.", up)
        yield from found
        yield _gauge(
            "kdserve_metrics_database_seconds",
            "Time this scrape spent reading the database.",
            time.perf_counter() - started,
        )

    def _from_database(self, repo: MetricsRepository) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("kdserve_jobs", "Jobs by status, now.", labels=["status"])
        counts = repo.jobs_by_status()
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs

        transitions = CounterMetricFamily(
            "kdserve_job_transitions",
            "State changes of jobs, by the status entered (job_events rows of kind 'state').",
            labels=["status"],
        )
        entered = repo.transitions()
        for new in sorted({s.value for s in JobStatus} | set(entered)):
            transitions.add_metric([new], entered.get(new, 0))
        yield transitions

        durations = HistogramMetricFamily(
            "kdserve_job_duration_seconds",
            "Jobs that ended after running, by final status: from their first start to their "
            "end (retries included).",
            labels=["status"],
        )
        by_status = repo.job_durations(DURATION_BUCKETS)
        for status in FINAL:
            _add_histogram(durations, [status.value], by_status.get(status.value))
        yield durations

        stages = HistogramMetricFamily(
            "kdserve_stage_duration_seconds",
            "Training time of each stage of succeeded jobs (report.json's stage_seconds).",
            labels=["stage"],
        )
        by_stage = repo.stage_durations(DURATION_BUCKETS)
        for stage in STAGES:
            _add_histogram(stages, [stage], by_stage.get(stage))
        yield stages

        now = datetime.now(UTC)
        beats = repo.running_heartbeats(
            stale_before=now - timedelta(seconds=self.settings.heartbeat_timeout_s)
        )
        yield _gauge(
            "kdserve_running_jobs_stale_heartbeat",
            "Running jobs whose worker has not written a heartbeat for "
            "KDSERVE_HEARTBEAT_TIMEOUT_S: the reaper requeues them.",
            beats.stale,
        )
        yield _gauge(
            "kdserve_running_jobs_oldest_heartbeat_age_seconds",
            "Age of the oldest heartbeat among running jobs (0 when none runs).",
            max(0.0, (now - beats.oldest).total_seconds()) if beats.oldest else 0.0,
        )

        cache = repo.cache_totals()
        yield _gauge("kdserve_teacher_cache_entries", "Teacher-cache entries kept.", cache.entries)
        yield _gauge(
            "kdserve_teacher_cache_bytes", "Bytes of the teacher-cache entries kept.", cache.bytes
        )
        hits = CounterMetricFamily(
            "kdserve_teacher_cache_hits",
            "Times jobs read a teacher-cache entry instead of running the teacher (of the "
            "entries kept: evicting one drops its hits).",
        )
        hits.add_metric([], cache.hits)
        yield hits

    # -- broker ----------------------------------------------------------------------------

    def _broker(self) -> Iterator[Metric]:
        if self.redis is None:
            return  # kombu's SQLAlchemy transport (embedded mode): no queue figures
        started = time.perf_counter()
        try:
            found = backlog.read_backlog(self.redis, self.queues)
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics: the broker did not answer: %s", _reason(exc))
            found = None
        yield _gauge("kdserve_broker_up", "1 if this scrape read the broker.", found is not None)
        if found is not None:
            waiting = GaugeMetricFamily(
                "kdserve_queue_messages",
                "Messages waiting on a broker queue, by queue and priority level (0 is taken "
                "first; sum by queue for its depth).",
                labels=["queue", "priority"],
            )
            for (queue, level), n in sorted(found.waiting.items()):
                waiting.add_metric([queue, str(level)], n)
            yield waiting
            yield _gauge(
                "kdserve_queue_unacked_messages",
                "Messages workers have taken and not acknowledged yet (running tasks).",
                found.unacked,
            )
        yield _gauge(
            "kdserve_metrics_broker_seconds",
            "Time this scrape spent reading the broker.",
            time.perf_counter() - started,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _add_histogram(family: HistogramMetricFamily, labels: list[str], h: Histogram | None) -> None:
    buckets = h.buckets if h else (0,) * len(DURATION_BUCKETS)
    count, total = (h.count, h.total) if h else (0, 0.0)
    family.add_metric(
        labels,
        [(floatToGoString(b), n) for b, n in zip(DURATION_BUCKETS, buckets, strict=True)]
        + [("+Inf", count)],
        sum_value=total,
    )


def _reason(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
