"""The scrape's aggregate queries on SQLite (embedded mode); tests/api/test_metrics.py runs
them on Postgres through the endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from cli.service import upgrade_database
from store.db import make_engine, make_sessionmaker
from store.models import CacheEntry, JobEvent, JobStatus
from store.repositories.metrics import MetricsRepository
from store.repositories.tenants import TenantRepository
from tests.api.factories import create_dataset, create_job

START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    url = f"sqlite:///{tmp_path / 'kdserve.db'}"
    upgrade_database(url, say=lambda _: None)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s, s.begin():
        yield s
    engine.dispose()


def test_the_aggregates_on_sqlite(session: Session) -> None:
    tenant = TenantRepository(session).get_or_create("t")
    dataset = create_dataset(session, tenant.id)
    for seconds, kd in ((30.5, 20.0), (4000.0, 3900.0)):
        job = create_job(
            session,
            tenant.id,
            dataset_id=dataset.id,
            status=JobStatus.succeeded,
            started_at=START,
            finished_at=START + timedelta(seconds=seconds),
            metrics={"stage_seconds_kd": kd},
        )
    session.add(JobEvent(job_id=job.id, seq=1, kind="state", status="running", data={}))
    session.add(JobEvent(job_id=job.id, seq=2, kind="state", status="succeeded", data={}))
    create_job(
        session,
        tenant.id,
        dataset_id=dataset.id,
        status=JobStatus.running,
        heartbeat_at=START,
    )
    session.add(
        CacheEntry(tenant_id=tenant.id, key="k", uri="file:///x", size=7, sha256="0", hits=2)
    )
    session.flush()
    repo = MetricsRepository(session)

    assert repo.jobs_by_status() == {"succeeded": 2, "running": 1}
    assert repo.transitions() == {"running": 1, "succeeded": 1}
    durations = repo.job_durations((60, 3600, 7200))["succeeded"]
    assert (durations.buckets, durations.count) == ((1, 1, 2), 2)
    assert durations.total == pytest.approx(4030.5, abs=1e-3)
    stages = repo.stage_durations((60, 3600, 7200))
    assert (stages["kd"].buckets, stages["kd"].count, stages["kd"].total) == ((1, 1, 2), 2, 3920)
    assert stages["hint"].count == 0
    beats = repo.running_heartbeats(stale_before=START + timedelta(seconds=1))
    assert (beats.running, beats.stale, beats.oldest) == (1, 1, START)
    cache = repo.cache_totals()
    assert (cache.entries, cache.bytes, cache.hits) == (1, 7, 2)
