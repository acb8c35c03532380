"""The job event log as the worker's writes leave it, on Postgres and SQLite: one event per
transition, epoch and report, numbered 1, 2, ... without gaps, and none for a write that
changed nothing."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from store.db import transaction
from store.models import Job, JobEvent, JobStatus, utcnow
from store.repositories import events
from store.repositories.jobs import JobRepository
from store.repositories.runs import Claim, NewArtifact, RunRepository
from tests.worker.factories import Env, World, create_world

TIMEOUT = timedelta(seconds=60)


def submitted(env: Env, world: World) -> uuid.UUID:
    """A job as the API creates it: the row and its ``queued`` event, in one transaction."""
    job_id = world.job(env)
    env.add(lambda s: events.queued(s, [s.get_one(Job, job_id)]))
    return job_id


def claim(env: Env, job_id: uuid.UUID, lease: str, *, max_attempts: int = 3) -> Claim:
    now = utcnow()
    with transaction(env.sessions) as s:
        return RunRepository(s).claim(
            job_id, lease=lease, now=now, stale_before=now - TIMEOUT, max_attempts=max_attempts
        )


def log(env: Env, job_id: uuid.UUID) -> list[tuple[int, str, str | None, dict[str, Any]]]:
    with env.sessions() as s:
        rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq))
        return [(e.seq, e.kind, e.status, e.data) for e in rows]


def epoch(env: Env, job_id: uuid.UUID, lease: str, step: int) -> bool:
    with transaction(env.sessions) as s:
        return (
            RunRepository(s)
            .record_epoch(
                job_id,
                lease=lease,
                now=utcnow(),
                step=step,
                points={"val_accuracy": step / 10},
                stage="kd",
                epoch=step,
                progress=step / 2,
            )
            .held
        )


def test_a_job_that_succeeds_logs_queued_running_its_epochs_succeeded_then_its_report(
    env: Env,
) -> None:
    job_id = submitted(env, create_world(env))
    assert claim(env, job_id, "l") is Claim.claimed
    assert epoch(env, job_id, "l", 1)
    assert epoch(env, job_id, "l", 2)
    with transaction(env.sessions) as s:
        assert RunRepository(s).succeed(
            job_id,
            lease="l",
            now=utcnow(),
            artifacts=[NewArtifact("report.json", "file:///r", 2, "0" * 64)],
            metrics={"student_accuracy": 0.9},
            warnings=["onnx left out"],
        )

    entries = log(env, job_id)
    assert [(seq, kind, status) for seq, kind, status, _ in entries] == [
        (1, "state", "queued"),
        (2, "state", "running"),
        (3, "epoch", None),
        (4, "epoch", None),
        (5, "state", "succeeded"),
        (6, "report", None),
    ]
    assert entries[0][3] == {"status": "queued", "error": None, "reason": "submitted"}
    assert entries[1][3] == {"status": "running", "error": None, "attempt": 1}
    assert entries[2][3] == {
        "stage": "kd",
        "epoch": 1,
        "progress": 0.5,
        "step": 1,
        "metrics": {"val_accuracy": 0.1},
    }
    assert entries[3][3]["epoch"] == 2
    assert entries[4][3] == {"status": "succeeded", "error": None}
    assert entries[5][3] == {
        "metrics": {"student_accuracy": 0.9},
        "choices": {},
        "warnings": ["onnx left out"],
        "artifacts": ["report.json"],
    }


def test_a_lost_worker_is_logged_requeued_then_failed_with_its_error(env: Env) -> None:
    job_id = submitted(env, create_world(env))
    assert claim(env, job_id, "first", max_attempts=2) is Claim.claimed
    stale = utcnow() - TIMEOUT - timedelta(seconds=1)
    env.update_job(job_id, heartbeat_at=stale)
    now = utcnow()
    with transaction(env.sessions) as s:
        repo = RunRepository(s)
        assert not repo.fail_lost(job_id, stale_before=now - TIMEOUT, max_attempts=2, now=now)
        assert repo.requeue(job_id, stale_before=now - TIMEOUT, max_attempts=2, now=now)
        assert not repo.requeue(job_id, stale_before=now - TIMEOUT, max_attempts=2, now=now)
    assert claim(env, job_id, "second", max_attempts=2) is Claim.claimed
    env.update_job(job_id, heartbeat_at=stale)
    with transaction(env.sessions) as s:
        assert RunRepository(s).fail_lost(
            job_id, stale_before=now - TIMEOUT, max_attempts=2, now=now
        )

    entries = log(env, job_id)
    assert [(kind, status) for _, kind, status, _ in entries] == [
        ("state", "queued"),
        ("state", "running"),
        ("state", "queued"),
        ("state", "running"),
        ("state", "failed"),
    ]
    assert entries[2][3] == {"status": "queued", "error": None, "reason": "worker_lost"}
    assert entries[3][3]["attempt"] == 2
    error = entries[4][3]["error"]
    assert error["code"] == "worker_lost"
    assert "stopped responding 2 times" in error["message"]


def test_a_claim_out_of_attempts_logs_the_failure(env: Env) -> None:
    job_id = submitted(env, create_world(env))
    env.update_job(
        job_id, status=JobStatus.running, attempts=3, heartbeat_at=utcnow() - 2 * TIMEOUT
    )
    assert claim(env, job_id, "new", max_attempts=3) is Claim.exhausted
    assert claim(env, job_id, "again", max_attempts=3) is Claim.skipped
    last = log(env, job_id)[-1]
    assert (last[0], last[1], last[2], last[3]["error"]["code"]) == (
        2,
        "state",
        "failed",
        "worker_lost",
    )


def test_writes_that_change_nothing_log_nothing(env: Env) -> None:
    world = create_world(env)
    job_id = submitted(env, world)
    assert claim(env, job_id, "old") is Claim.claimed
    env.update_job(job_id, lease="new")  # the reaper gave it to another attempt
    assert not epoch(env, job_id, "old", 1)
    with transaction(env.sessions) as s:
        repo = RunRepository(s)
        assert not repo.finish(job_id, lease="old", status=JobStatus.failed, now=utcnow())
        assert not repo.succeed(job_id, lease="old", now=utcnow(), artifacts=[], metrics={})
    assert claim(env, job_id, "third") is Claim.skipped  # its owner is alive
    with transaction(env.sessions) as s:  # a running job is not canceled at once
        assert not JobRepository(s, world.tenant_id).cancel_queued(job_id)
    assert [status for _, _, status, _ in log(env, job_id)] == ["queued", "running"]


def test_a_queued_job_canceled_logs_its_error(env: Env) -> None:
    world = create_world(env)
    job_id = submitted(env, world)
    with transaction(env.sessions) as s:
        assert JobRepository(s, world.tenant_id).cancel_queued(job_id)
    assert claim(env, job_id, "late") is Claim.skipped
    assert log(env, job_id)[-1][1:] == (
        "state",
        "canceled",
        {
            "status": "canceled",
            "error": {"code": "canceled", "message": "canceled before it started"},
        },
    )


def test_concurrent_claims_log_one_running_event(env: Env) -> None:
    job_id = submitted(env, create_world(env))
    barrier = threading.Barrier(4)
    results: list[Claim] = []

    def one(lease: str) -> None:
        barrier.wait()
        results.append(claim(env, job_id, lease))

    threads = [threading.Thread(target=one, args=(f"lease-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [Claim.claimed] + [Claim.skipped] * 3
    assert [(seq, status) for seq, _, status, _ in log(env, job_id)] == [
        (1, "queued"),
        (2, "running"),
    ]
