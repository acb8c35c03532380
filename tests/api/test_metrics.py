"""``GET /metrics``: the app in-process over the real Postgres and Redis (one API process, so
prometheus-client keeps its values in memory; tests/e2e/test_metrics.py runs the real
``kdserve api`` processes in multiprocess mode)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from store.models import CacheEntry, JobEvent, JobStatus
from store.queue import RUN_JOB, make_celery
from store.settings import Settings
from tests.api.factories import Tenancy, create_dataset, create_job
from tests.broker import queued
from tests.metrics import samples, total, value

JOB_ROUTE = "/v1/jobs/{job_id}"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _scrape(client: TestClient) -> str:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def test_requests_are_counted_by_route_template_never_by_path(
    client: TestClient, alice: Tenancy
) -> None:
    before = _scrape(client)
    ids = [uuid.uuid4() for _ in range(3)]
    for job_id in ids:
        assert client.get(f"/v1/jobs/{job_id}", headers=alice.headers).status_code == 404
    assert client.get(f"/v1/jobs/{ids[0]}").status_code == 401  # the gate's answer
    assert client.get("/no/such/path").status_code == 404
    after = _scrape(client)

    def grew(**labels: str) -> float:
        name = "kdserve_http_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew(method="GET", route=JOB_ROUTE, status="404") == 3
    assert grew(method="GET", route=JOB_ROUTE, status="401") == 1
    assert grew(method="GET", route="unmatched", status="404") == 1
    latency = "kdserve_http_request_duration_seconds_count"
    assert value(after, latency, method="GET", route=JOB_ROUTE) - value(
        before, latency, method="GET", route=JOB_ROUTE
    ) == pytest.approx(4)
    routes = {s.labels.get("route") for s in samples(after) if "route" in s.labels}
    assert not any(str(i) in str(routes) for i in ids), "a raw path became a label"


def test_jobs_by_state_and_transitions_match_the_rows(
    client: TestClient, sessions: sessionmaker[Session], alice: Tenancy
) -> None:
    statuses = [JobStatus.queued] * 2 + [JobStatus.running] + [JobStatus.failed] * 3
    with sessions() as s, s.begin():
        dataset = create_dataset(s, alice.id)
        jobs = [create_job(s, alice.id, dataset_id=dataset.id, status=st) for st in statuses]
        # What the events writer records: a job's state changes, each with its new status;
        # epoch and report events never count as transitions.
        events = {
            jobs[0].id: ["queued"],
            jobs[2].id: ["queued", "running"],
            jobs[3].id: ["queued", "running", "queued", "running", "failed"],
        }
        for job_id, entered in events.items():
            for seq, status in enumerate(entered, start=1):
                s.add(JobEvent(job_id=job_id, seq=seq, kind="state", status=status, data={}))
        s.add(JobEvent(job_id=jobs[3].id, seq=6, kind="epoch", data={"epoch": 1}))
        s.add(JobEvent(job_id=jobs[3].id, seq=7, kind="report", data={}))

    text = _scrape(client)
    assert value(text, "kdserve_jobs", status="queued") == 2
    assert value(text, "kdserve_jobs", status="running") == 1
    assert value(text, "kdserve_jobs", status="failed") == 3
    assert value(text, "kdserve_jobs", status="succeeded") == 0
    assert value(text, "kdserve_jobs", status="canceled") == 0
    name = "kdserve_job_transitions_total"
    assert value(text, name, status="queued") == 4
    assert value(text, name, status="running") == 3
    assert value(text, name, status="failed") == 1
    assert value(text, name, status="succeeded") == 0
    assert total(text, name) == 8
    assert value(text, "kdserve_database_up") == 1


def test_job_and_stage_durations_are_histograms_of_the_rows(
    client: TestClient, sessions: sessionmaker[Session], alice: Tenancy
) -> None:
    with sessions() as s, s.begin():
        dataset = create_dataset(s, alice.id)
        for seconds, stages in ((45, {"hint": 5.0, "kd": 35.0}), (700, {"kd": 650.0})):
            create_job(
                s,
                alice.id,
                dataset_id=dataset.id,
                status=JobStatus.succeeded,
                started_at=NOW,
                finished_at=NOW + timedelta(seconds=seconds),
                metrics={
                    "student_accuracy": 0.9,
                    **{f"stage_seconds_{k}": v for k, v in stages.items()},
                },
            )
        create_job(
            s,
            alice.id,
            dataset_id=dataset.id,
            status=JobStatus.failed,
            started_at=NOW,
            finished_at=NOW + timedelta(seconds=20),
        )
        # Canceled while queued: it never ran, so it has no duration.
        create_job(s, alice.id, dataset_id=dataset.id, status=JobStatus.canceled, finished_at=NOW)

    text = _scrape(client)
    job = "kdserve_job_duration_seconds"
    assert value(text, f"{job}_count", status="succeeded") == 2
    assert value(text, f"{job}_sum", status="succeeded") == pytest.approx(745)
    assert value(text, f"{job}_bucket", status="succeeded", le="60.0") == 1
    assert value(text, f"{job}_bucket", status="succeeded", le="1200.0") == 2
    assert value(text, f"{job}_bucket", status="succeeded", le="+Inf") == 2
    assert value(text, f"{job}_count", status="failed") == 1
    assert value(text, f"{job}_bucket", status="failed", le="30.0") == 1
    assert value(text, f"{job}_count", status="canceled") == 0

    stage = "kdserve_stage_duration_seconds"
    assert value(text, f"{stage}_count", stage="kd") == 2
    assert value(text, f"{stage}_sum", stage="kd") == pytest.approx(685)
    assert value(text, f"{stage}_bucket", stage="kd", le="60.0") == 1
    assert value(text, f"{stage}_count", stage="hint") == 1
    assert value(text, f"{stage}_bucket", stage="hint", le="10.0") == 1
    assert value(text, f"{stage}_count", stage="scratch") == 0


def test_teacher_cache_and_heartbeats(
    client: TestClient, sessions: sessionmaker[Session], alice: Tenancy, bob: Tenancy
) -> None:
    now = datetime.now(UTC)
    with sessions() as s, s.begin():
        for tenant, size, hits in ((alice, 1000, 3), (alice, 500, 0), (bob, 250, 4)):
            s.add(
                CacheEntry(
                    tenant_id=tenant.id,
                    key=uuid.uuid4().hex,
                    uri="file:///nowhere",
                    size=size,
                    sha256="0" * 64,
                    hits=hits,
                )
            )
        dataset = create_dataset(s, alice.id)
        # One alive (heartbeat 1 s ago), one whose worker is gone (past the 60 s timeout).
        for age in (1, 600):
            create_job(
                s,
                alice.id,
                dataset_id=dataset.id,
                status=JobStatus.running,
                heartbeat_at=now - timedelta(seconds=age),
            )

    text = _scrape(client)
    assert value(text, "kdserve_teacher_cache_entries") == 3
    assert value(text, "kdserve_teacher_cache_bytes") == 1750
    assert value(text, "kdserve_teacher_cache_hits_total") == 7
    assert value(text, "kdserve_running_jobs_stale_heartbeat") == 1
    assert 600 <= value(text, "kdserve_running_jobs_oldest_heartbeat_age_seconds") < 660


def test_queue_depth_counts_every_priority_level(client: TestClient, settings: Settings) -> None:
    celery = make_celery(settings)
    for priority in (0, 0, 3, 9):
        celery.send_task(RUN_JOB, args=[str(uuid.uuid4())], queue=settings.queue, priority=priority)
    celery.send_task("datasets.validate", args=[str(uuid.uuid4())], priority=1)
    waiting = queued(settings.broker, settings.queue)
    assert sorted(level for *_, level in waiting) == [0, 0, 3, 9]  # as the worker would see

    text = _scrape(client)
    depth = "kdserve_queue_messages"
    assert value(text, depth, queue=settings.queue, priority="0") == 2
    assert value(text, depth, queue=settings.queue, priority="3") == 1
    assert value(text, depth, queue=settings.queue, priority="9") == 1
    assert total(text, depth, queue=settings.queue) == len(waiting)
    # `default` is one name for every test run sharing this Redis database: at least ours.
    assert value(text, depth, queue="default", priority="1") >= 1
    assert "kdserve_queue_unacked_messages" in {s.name for s in samples(text)}
    assert value(text, "kdserve_broker_up") == 1


def test_without_database_and_broker_the_scrape_still_answers(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        # Nothing listens on port 1: refused at once.
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none",
        broker_url="redis://127.0.0.1:1/0",
        storage_url=(tmp_path / "storage").as_uri(),
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        text = _scrape(client)
    assert value(text, "kdserve_database_up") == 0
    assert value(text, "kdserve_broker_up") == 0
    assert value(text, "kdserve_http_requests_total", route="/healthz", status="200") == 1
    assert not [s for s in samples(text) if s.name.startswith("kdserve_jobs")]


def test_a_metrics_token_is_required_once_set(settings: Settings) -> None:
    settings = settings.model_copy(update={"metrics_token": SecretStr("s3cret")})
    with TestClient(create_app(settings)) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401
        assert "KDSERVE_METRICS_TOKEN" in refused.json()["detail"]
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert value(ok.text, "kdserve_http_requests_total", route="/metrics", status="401") == 2


def test_metrics_is_not_in_the_openapi_document(client: TestClient) -> None:
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]
