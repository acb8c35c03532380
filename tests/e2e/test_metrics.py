"""``GET /metrics`` of the real ``kdserve api`` processes (prometheus-client's multiprocess
mode, as deployed), with the real worker, Postgres and Redis behind them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from store.db import make_engine, make_sessionmaker, transaction
from store.models import JobEvent, JobStatus
from store.repositories.tenants import TenantRepository
from tests.api.factories import create_dataset, create_job
from tests.e2e.stack import KDSERVE, Stack
from tests.metrics import samples, value
from tests.s3 import free_port

pytestmark = pytest.mark.slow

REQUESTS = "kdserve_http_requests_total"


def _scrape(url: str) -> str:
    r = httpx.get(f"{url}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    return r.text


def test_the_api_process_reports_requests_jobs_transitions_and_queues(stack: Stack) -> None:
    key = stack.run("keys", "create", "--tenant", "metrics-alice")
    engine = make_engine(stack.env["KDSERVE_DATABASE_URL"], pool_size=1)
    try:
        with transaction(make_sessionmaker(engine)) as s:
            tenant = TenantRepository(s).get_or_create("metrics-alice")
            dataset = create_dataset(s, tenant.id)
            failed = create_job(s, tenant.id, dataset_id=dataset.id, status=JobStatus.failed)
            for seq, status in enumerate(("queued", "running", "failed"), start=1):
                s.add(JobEvent(job_id=failed.id, seq=seq, kind="state", status=status, data={}))
    finally:
        engine.dispose()

    headers = {"Authorization": f"Bearer {key}"}
    before = _scrape(stack.url)
    for _ in range(3):
        r = httpx.get(f"{stack.url}/v1/jobs/{uuid.uuid4()}", headers=headers, timeout=30)
        assert r.status_code == 404
    after = _scrape(stack.url)

    labels = {"method": "GET", "route": "/v1/jobs/{job_id}", "status": "404"}
    assert value(after, REQUESTS, **labels) - value(before, REQUESTS, **labels) == 3
    assert value(after, "kdserve_database_up") == 1
    assert value(after, "kdserve_broker_up") == 1
    # Rows of this test only: the module's other tests make none.
    assert value(after, "kdserve_jobs", status="failed") == 1
    assert value(after, "kdserve_job_transitions_total", status="failed") == 1
    assert value(after, "kdserve_job_transitions_total", status="running") == 1
    queues = {s.labels["queue"] for s in samples(after) if s.name == "kdserve_queue_messages"}
    assert queues == {stack.env["KDSERVE_QUEUE"], stack.env["KDSERVE_DEFAULT_QUEUE"]}


@pytest.fixture
def two_workers(stack: Stack, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`kdserve api --workers 2` beside the stack's, with the operator's own
    PROMETHEUS_MULTIPROC_DIR (left from a "previous run"); yields its URL and that folder."""
    folder = tmp_path / "prometheus"
    folder.mkdir()
    # A previous run's file: summed in, or unreadable (this one is empty), were it kept.
    (folder / "counter_1.db").write_bytes(b"")
    port = free_port()
    env = {**stack.env, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    with (tmp_path / "api2.log").open("wb") as log:
        proc = subprocess.Popen(
            [KDSERVE, "api", "--workers", "2", "--port", str(port), "--log-level", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "api2.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "api2.log").read_text()
            time.sleep(0.3)
        yield url, folder
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_request_counts_are_summed_over_the_api_worker_processes(
    two_workers: tuple[str, Path],
) -> None:
    url, folder = two_workers
    assert not (folder / "counter_1.db").exists(), "the previous run's values were kept"
    labels = {"method": "GET", "route": "/healthz", "status": "200"}
    before = value(_scrape(url), REQUESTS, **labels)

    def ping(_: int) -> int:
        # A connection per request, from several threads: both processes take some.
        return httpx.get(f"{url}/healthz", timeout=30).status_code

    n = 60
    with ThreadPoolExecutor(max_workers=6) as pool:
        assert set(pool.map(ping, range(n))) == {200}

    # Whichever process answers a scrape, it sums the files of both.
    counts = {value(_scrape(url), REQUESTS, **labels) - before for _ in range(6)}
    assert counts == {n}
    writers = sorted(p.name for p in folder.glob("counter_*.db"))
    assert len(writers) == 2, f"both processes should have served requests: {writers}"
