"""PostgreSQL stopped for several seconds while pollers hit the API and a job trains: the API
answers 503 with ``Retry-After`` and a problem+json body (never a 500, never a stack trace),
recovers by itself when the database is back, and the job's writes are retried until it
completes, on its first attempt."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client import KDServeClient
from tests.e2e.stack import STUDENT, Stack, wait_job
from tests.faults.jobs import assert_one_clean_run, scratch, wait_final
from tests.faults.servers import PgCluster, pg_cluster

pytestmark = pytest.mark.slow

EPOCHS = 15
OUTAGE_S = 6


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with pg_cluster() as c:
        yield c


@pytest.fixture(scope="module")
def database_url(cluster: PgCluster) -> str:
    return cluster.create_database("kdserve_faults")


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, str]:
    # Production-like: a database outage of a few seconds must not look like a dead worker.
    return {"KDSERVE_HEARTBEAT_TIMEOUT_S": "40"}


def test_database_restart_gives_503s_then_recovers_and_the_job_completes(
    stack: Stack,
    alice: KDServeClient,
    data: dict[str, str],
    cluster: PgCluster,
    database_url: str,
    tmp_path: Path,
) -> None:
    job = alice.submit_job(student=STUDENT, config=scratch(EPOCHS), **data)
    wait_job(alice, job["id"], lambda j: j["status"] == "running" and j["epoch"], timeout=180)

    # (sent, path, status, body, Retry-After, answered)
    seen: list[tuple[float, str, int, str, str | None, float]] = []
    stop = threading.Event()
    paths = [f"/v1/jobs/{job['id']}", "/v1/jobs", "/v1/teachers", "/readyz"]

    def poll() -> None:
        headers = {"Authorization": f"Bearer {alice.api_key}"}
        with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as http:
            while not stop.is_set():
                for path in paths:
                    sent = time.monotonic()
                    r = http.get(path)
                    seen.append(
                        (
                            sent,
                            path,
                            r.status_code,
                            r.text,
                            r.headers.get("retry-after"),
                            time.monotonic(),
                        )
                    )
                time.sleep(0.1)

    pollers = [threading.Thread(target=poll, daemon=True) for _ in range(3)]
    for t in pollers:
        t.start()
    time.sleep(1)
    cluster.stop("fast")  # terminates every connection, as a restart does
    down_at = time.monotonic()
    time.sleep(OUTAGE_S)
    restarting_at = time.monotonic()  # the server accepts connections before pg_ctl returns
    cluster.start()
    up_at = time.monotonic()

    # Back by itself: every path answers 200 again within a few seconds.
    def all_ok_since(t0: float) -> bool:
        recent = [s for s in seen if s[0] > t0]
        return len(recent) >= 2 * len(paths) and all(s[2] == 200 for s in recent[-8:])

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all_ok_since(up_at):
        time.sleep(0.5)
    stop.set()
    for t in pollers:
        t.join(30)

    statuses = {s[2] for s in seen}
    assert statuses <= {200, 503}, [s[1:4] for s in seen if s[2] not in (200, 503)][:5]
    # Sent and answered while the database was down (a request answered from a session it
    # opened before the stop may still be a 200).
    outage = [s for s in seen if down_at + 1 < s[0] and s[5] < restarting_at]
    assert outage, "no request was answered during the outage"
    assert all(s[2] == 503 for s in outage), [s[1:3] for s in outage if s[2] != 503][:5]
    for _, path, _, text, retry_after, _ in (s for s in seen if s[2] == 503):
        assert retry_after is not None, path
        assert int(retry_after) > 0, path
        assert "Traceback" not in text
        assert "sqlalchemy" not in text.lower(), text
    assert all_ok_since(up_at), [s[1:3] for s in seen[-8:]]

    done = wait_final(alice, job["id"], timeout=240)
    assert_one_clean_run(
        alice,
        database_url,
        done,
        epochs=[("scratch", EPOCHS)],
        attempts=1,
        folder=tmp_path / "out",
    )
