"""Object storage failing while a finished job uploads its artifacts: a short outage is
retried and the job succeeds; a long one fails the job cleanly with code ``storage``. Either
way, every artifact the API lists can be downloaded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from client import KDServeClient
from tests.e2e.stack import STUDENT, Stack
from tests.faults.jobs import assert_one_clean_run, scratch, wait_final
from tests.faults.servers import MotoS3, S3Faults

pytestmark = pytest.mark.slow

EPOCHS = 2


def test_storage_down_briefly_during_upload_is_retried_and_the_job_succeeds(
    stack: Stack,
    alice: KDServeClient,
    data: dict[str, str],
    s3_server: MotoS3,
    s3_faults: S3Faults,
    database_url: str,
    tmp_path: Path,
) -> None:
    hold = s3_faults.hold(lambda m, k: m in S3Faults.WRITES and "/artifacts/" in k)
    job = alice.submit_job(student=STUDENT, config=scratch(EPOCHS), **data)
    hold.wait(240)  # training is over; the first artifact is on its way
    s3_server.stop()
    s3_faults.down.set()
    hold.release(fail=True)
    time.sleep(2)  # within the worker's storage retries (1 s, 3 s, 10 s)
    s3_faults.down.clear()
    s3_server.start()
    done = wait_final(alice, job["id"], timeout=180)
    assert_one_clean_run(
        alice,
        database_url,
        done,
        epochs=[("scratch", EPOCHS)],
        attempts=1,
        folder=tmp_path / "out",
    )


def test_storage_down_for_good_during_upload_fails_the_job_and_lists_nothing(
    stack: Stack,
    alice: KDServeClient,
    data: dict[str, str],
    s3_server: MotoS3,
    s3_faults: S3Faults,
    tmp_path: Path,
) -> None:
    hold = s3_faults.hold(lambda m, k: m in S3Faults.WRITES and "/artifacts/" in k)
    job = alice.submit_job(student=STUDENT, config=scratch(EPOCHS), **data)
    hold.wait(240)
    s3_server.stop()
    s3_faults.down.set()
    hold.release(fail=True)
    try:
        done = wait_final(alice, job["id"], timeout=180)
    finally:
        s3_faults.down.clear()
        s3_server.start()
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "storage", done
    assert "submit the job again" in done["error"]["message"]
    assert alice.list_artifacts(job["id"]) == []
