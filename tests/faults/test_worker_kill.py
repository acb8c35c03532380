"""A worker SIGKILLed in every stage of a FitNets job (loading its inputs, the hint stage,
the KD stage, uploading its artifacts): the job resumes on a new worker and ends with exactly
one set of artifacts, and no training process of the killed worker is left running."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from client import KDServeClient
from tests.e2e.stack import DIGITS, STUDENT, Stack, wait_job
from tests.faults.jobs import assert_one_clean_run, fitnet, wait_final
from tests.faults.servers import (
    Proc,
    S3Faults,
    busiest_pool_child,
    descendants,
    processes,
    sigkill,
    survivors,
    wait_until,
)

pytestmark = pytest.mark.slow

HINT, KD = 3, 3


@pytest.fixture(scope="module")
def teacher(alice: KDServeClient, teacher_weights: Path) -> dict[str, Any]:
    t = alice.upload_teacher(
        teacher_weights,
        input_shape=(1, 8, 8),
        num_classes=10,
        arch=json.loads((DIGITS / "teacher.json").read_text()),
        name="digits teacher",
    )
    t = alice.wait_for("teachers", t["id"], timeout=120)
    assert t["status"] == "ready", t
    return t


def _in_stage(stage: str) -> Any:
    return lambda j: j["status"] == "running" and j["stage"] == stage and (j["epoch"] or 0) >= 1


@pytest.mark.parametrize(
    ("stage", "kill"),
    [
        ("loading", "group"),
        ("hint", "group"),
        ("kd", "group"),
        ("upload", "group"),
        ("kd", "pool_child"),
    ],
)
def test_killed_worker_resumes_with_one_set_of_artifacts_and_no_orphans(
    stage: str,
    kill: str,
    stack: Stack,
    alice: KDServeClient,
    data: dict[str, str],
    teacher: dict[str, Any],
    s3_faults: S3Faults,
    database_url: str,
    tmp_path: Path,
) -> None:
    hold = None
    if stage == "loading":  # held while it downloads its training data: before any epoch
        hold = s3_faults.hold(lambda m, k: m == "get_object" and "/blobs/" in k)
    elif stage == "upload":  # held on the first artifact it uploads, after training
        hold = s3_faults.hold(lambda m, k: m in S3Faults.WRITES and "/artifacts/" in k)
    job = alice.submit_job(
        student=STUDENT, teacher_id=teacher["id"], config=fitnet(HINT, KD), **data
    )
    if hold is not None:
        hold.wait(180)
        seen = alice.get_job(job["id"])
        assert seen["status"] == "running", seen
        if stage == "loading":
            assert seen["stage"] is None, seen
            assert seen["progress"] == 0, seen
        else:
            assert seen["progress"] == pytest.approx(1.0), seen
    else:
        wait_job(alice, job["id"], _in_stage(stage), timeout=180, every=0.05)

    worker = stack.procs["worker"]
    if kill == "group":
        # The Celery main process, its pool child and everything in its process group.
        doomed = {worker.pid, *(p.pid for p in descendants(worker.pid))}
        stack.kill("worker")
    else:
        # Only the pool child running the job, as the kernel's OOM killer would: what it
        # started must die with it; the Celery main process lives on and runs it again.
        child = busiest_pool_child(worker.pid)
        doomed = {child, *(p.pid for p in descendants(child))}
        sigkill(child)
    if hold is not None:
        hold.release()  # the request completes on the server, for a client that is gone

    def orphans() -> list[Proc]:
        if kill == "group":
            return survivors(doomed, pgid=worker.pid, needles=(job["id"], str(stack.home)))
        return [p for p in processes().values() if p.pid in doomed]

    wait_until(lambda: not orphans(), timeout=5)
    assert orphans() == [], f"processes of the killed worker still run: {orphans()}"

    if kill == "group":
        stack.start_worker("worker")
    done = wait_final(alice, job["id"], timeout=300)
    assert_one_clean_run(
        alice,
        database_url,
        done,
        epochs=[("hint", HINT), ("kd", KD)],
        attempts=2,
        folder=tmp_path / "out",
    )


def test_a_worker_killed_mid_sweep_loses_no_point_and_runs_none_twice(
    stack: Stack,
    alice: KDServeClient,
    data: dict[str, str],
    teacher: dict[str, Any],
    database_url: str,
    tmp_path: Path,
) -> None:
    """SIGKILL the worker while a sweep's point trains and another waits in the queue: on a new
    worker every point succeeds once (the killed one resumes on its second attempt), and the
    sweep has exactly its points' jobs."""
    sweep = alice.submit_sweep(
        student=STUDENT,
        teacher_id=teacher["id"],
        config={"method": "kd", "epochs": KD, "batch_size": 64, "seed": 0},
        grid={"temperature": [2, 8]},
        dataset_id=data["dataset_id"],
        val_dataset_id=data["val_dataset_id"],
    )
    jobs = [p["job_id"] for p in sweep["points"]]

    training: list[str] = []

    def mid_training() -> bool:
        training[:] = [j for j in jobs if _in_stage("kd")(alice.get_job(j))]
        return bool(training)

    assert wait_until(mid_training, timeout=180, every=0.05), alice.get_sweep(sweep["id"])
    stack.kill("worker")
    killed = training[0]
    stack.start_worker("worker")

    done = alice.wait_sweep(sweep["id"], timeout=600, interval=0.5)
    assert done["status"] == "succeeded", (done, stack.log("worker"))
    assert [p["job_id"] for p in done["points"]] == jobs
    for n, job in enumerate(jobs):
        assert_one_clean_run(
            alice,
            database_url,
            wait_final(alice, job, timeout=5),
            epochs=[("kd", KD)],
            attempts=2 if job == killed else 1,
            folder=tmp_path / str(n),
        )
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://", 1)) as c:
        row = c.execute("SELECT count(*) FROM jobs WHERE sweep_id = %s", (sweep["id"],)).fetchone()
    assert row == (len(jobs),)
    assert len(done["leaderboard"]) == len(jobs)
