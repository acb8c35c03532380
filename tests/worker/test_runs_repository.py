"""The compare-and-set SQL of claiming and leasing a job, on Postgres and SQLite."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest

from store.db import transaction
from store.models import JobStatus, utcnow
from store.repositories.runs import Claim, RunRepository
from tests.worker.factories import Env, World, create_world

TIMEOUT = timedelta(seconds=60)


@pytest.fixture
def world(env: Env) -> World:
    return create_world(env)


def claim(env: Env, job_id: uuid.UUID, lease: str, *, max_attempts: int = 3) -> Claim:
    now = utcnow()
    with transaction(env.sessions) as s:
        return RunRepository(s).claim(
            job_id, lease=lease, now=now, stale_before=now - TIMEOUT, max_attempts=max_attempts
        )


def contend(env: Env, job_id: uuid.UUID, workers: int) -> list[Claim]:
    """``workers`` threads claim the job at the same moment."""
    barrier = threading.Barrier(workers)
    results: list[Claim] = []

    def one(lease: str) -> None:
        barrier.wait()
        results.append(claim(env, job_id, lease))

    threads = [threading.Thread(target=one, args=(f"lease-{i}",)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_of_concurrent_claims_exactly_one_wins(env: Env, world: World) -> None:
    for _ in range(3):
        job_id = world.job(env)
        results = contend(env, job_id, 4)
        assert sorted(results) == [Claim.claimed] + [Claim.skipped] * 3
        job = env.job(job_id)
        assert job.status == JobStatus.running
        assert job.attempts == 1
        assert job.lease is not None
        assert job.lease.startswith("lease-")
        assert job.started_at is not None
        assert job.heartbeat_at is not None


def test_a_running_job_is_reclaimed_only_once_its_heartbeat_is_stale(
    env: Env, world: World
) -> None:
    job_id = world.job(env)
    assert claim(env, job_id, "first") is Claim.claimed
    started = env.job(job_id).started_at

    assert claim(env, job_id, "second") is Claim.skipped  # fresh heartbeat: the owner lives
    assert env.job(job_id).lease == "first"

    env.update_job(job_id, heartbeat_at=utcnow() - TIMEOUT - timedelta(seconds=1))
    assert claim(env, job_id, "second") is Claim.claimed
    job = env.job(job_id)
    assert (job.lease, job.attempts, job.status) == ("second", 2, JobStatus.running)
    assert job.started_at == started  # the first attempt's start is kept


def test_a_stale_job_out_of_attempts_fails_as_worker_lost(env: Env, world: World) -> None:
    job_id = world.job(env)
    env.update_job(
        job_id,
        status=JobStatus.running,
        attempts=3,
        lease="old",
        heartbeat_at=utcnow() - 2 * TIMEOUT,
    )
    assert claim(env, job_id, "new", max_attempts=3) is Claim.exhausted
    job = env.job(job_id)
    assert (job.status, job.error_code, job.lease) == (JobStatus.failed, "worker_lost", None)
    assert job.error_message is not None
    assert "stopped responding 3 times" in job.error_message
    assert job.finished_at is not None


@pytest.mark.parametrize("status", [JobStatus.succeeded, JobStatus.failed, JobStatus.canceled])
def test_final_jobs_are_never_claimed(env: Env, world: World, status: JobStatus) -> None:
    job_id = world.job(env, status=status, heartbeat_at=utcnow() - 2 * TIMEOUT)
    assert claim(env, job_id, "x") is Claim.skipped
    assert env.job(job_id).status == status
    assert claim(env, uuid.uuid4(), "x") is Claim.skipped  # unknown job


def test_writes_of_an_attempt_that_lost_its_lease_match_nothing(env: Env, world: World) -> None:
    job_id = world.job(env)
    assert claim(env, job_id, "old") is Claim.claimed
    env.update_job(job_id, lease="new", cancel_requested=True)  # the reaper gave it away
    with transaction(env.sessions) as s:
        repo = RunRepository(s)
        assert not repo.touch(job_id, lease="old", now=utcnow(), progress=0.5).held
        assert not repo.record_epoch(
            job_id, lease="old", now=utcnow(), step=1, points={"val_accuracy": 0.5}
        ).held
        assert not repo.finish(job_id, lease="old", status=JobStatus.failed, now=utcnow())
        assert not repo.succeed(job_id, lease="old", now=utcnow(), artifacts=[], metrics={})
        state = repo.touch(job_id, lease="new", now=utcnow())
        assert state.held
        assert state.cancel_requested
    job = env.job(job_id)
    assert (job.status, job.progress, job.lease) == (JobStatus.running, 0.0, "new")
    assert env.points(job_id) == []


def test_an_epoch_replaces_points_of_its_step_and_later(env: Env, world: World) -> None:
    """A resumed attempt redoes epochs after its checkpoint; their points are replaced."""
    job_id = world.job(env)
    assert claim(env, job_id, "l") is Claim.claimed
    for step in (1, 2, 3):
        with transaction(env.sessions) as s:
            RunRepository(s).record_epoch(
                job_id,
                lease="l",
                now=utcnow(),
                step=step,
                points={"val_accuracy": step / 10, "lr": 0.1},
            )
    with transaction(env.sessions) as s:  # resumed from epoch 1's checkpoint
        RunRepository(s).record_epoch(
            job_id, lease="l", now=utcnow(), step=2, points={"val_accuracy": 0.9}, epoch=2
        )
    got = [(p.step, p.key, p.value) for p in env.points(job_id)]
    assert got == [(1, "lr", 0.1), (1, "val_accuracy", 0.1), (2, "val_accuracy", 0.9)]
    assert env.job(job_id).epoch == 2
