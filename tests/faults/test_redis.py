"""Redis (the broker) crashes and comes back while one job runs and others wait in its
queue: every job still finishes, and none runs twice (one attempt, one set of artifacts, one
metric row per epoch, checked in Postgres)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from client import KDServeClient
from tests.e2e.stack import STUDENT, Stack, wait_job
from tests.faults.jobs import assert_one_clean_run, scratch, wait_final
from tests.faults.servers import RedisServer

pytestmark = pytest.mark.slow

EPOCHS = 3


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, str]:
    # Re-send messages of jobs queued (or uploads validating) for 5 s, not 10 minutes, so a
    # message lost with the broker's data comes back within the test's bounds.
    return {"KDSERVE_RESEND_AFTER_S": "5"}


def _outage(redis_server: RedisServer, *, lose_data: bool) -> None:
    redis_server.crash()
    if lose_data:  # a Redis without persistence comes back empty
        for entry in redis_server.dir.iterdir():
            if entry.name.startswith("appendonly"):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    time.sleep(3)  # clients notice: the worker's consumer and the API's producer reconnect
    redis_server.start()


def test_persistent_redis_crash_loses_no_job_and_runs_none_twice(
    stack: Stack,
    alice: KDServeClient,
    data: dict[str, str],
    redis_server: RedisServer,
    database_url: str,
    tmp_path: Path,
) -> None:
    jobs = [alice.submit_job(student=STUDENT, config=scratch(EPOCHS), **data) for _ in range(3)]
    wait_job(alice, jobs[0]["id"], lambda j: j["status"] == "running" and j["epoch"], timeout=180)
    assert [alice.get_job(j["id"])["status"] for j in jobs[1:]] == ["queued", "queued"]
    _outage(redis_server, lose_data=False)
    for i, job in enumerate(jobs):
        done = wait_final(alice, job["id"], timeout=240)
        assert_one_clean_run(
            alice,
            database_url,
            done,
            epochs=[("scratch", EPOCHS)],
            attempts=1,
            folder=tmp_path / str(i),
        )


def test_redis_restarted_empty_still_runs_every_queued_job(
    stack: Stack,
    alice: KDServeClient,
    data: dict[str, str],
    redis_server: RedisServer,
    database_url: str,
    tmp_path: Path,
) -> None:
    jobs = [alice.submit_job(student=STUDENT, config=scratch(1), **data) for _ in range(3)]
    wait_job(alice, jobs[0]["id"], lambda j: j["status"] == "running", timeout=180)
    _outage(redis_server, lose_data=True)
    wait_final(alice, jobs[0]["id"], timeout=180)
    for i, job in enumerate(jobs):
        # Bounded: with the resend delay at 5 s, a lost message is re-sent within ~10 s.
        done = wait_final(alice, job["id"], timeout=45)
        assert_one_clean_run(
            alice,
            database_url,
            done,
            epochs=[("scratch", 1)],
            attempts=1,
            folder=tmp_path / str(i),
        )
