"""The reaper: stale jobs go back to the queue (message sent after the commit) or fail."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from store.models import AssetStatus, DatasetRecord, JobStatus, Teacher, utcnow
from store.queue import VALIDATE_DATASET, VALIDATE_TEACHER
from tests.worker.factories import (
    Env,
    World,
    create_dataset,
    create_teacher,
    create_tenant,
    create_world,
)
from worker.reaper import reap_jobs


@pytest.fixture
def world(env: Env) -> World:
    return create_world(env)


def running(env: Env, world: World, *, attempts: int, age_s: float) -> uuid.UUID:
    return world.job(
        env,
        status=JobStatus.running,
        attempts=attempts,
        lease="l",
        heartbeat_at=utcnow() - timedelta(seconds=age_s),
    )


def test_stale_jobs_are_requeued_or_failed_and_live_ones_left_alone(env: Env, world: World) -> None:
    timeout = env.settings.heartbeat_timeout_s
    stale = running(env, world, attempts=1, age_s=timeout + 5)
    exhausted = running(env, world, attempts=env.settings.max_attempts, age_s=timeout + 5)
    alive = running(env, world, attempts=1, age_s=timeout / 2)

    seen_at_send: list[tuple[str, JobStatus, str | None]] = []

    def send(job_id: str) -> None:  # the row must already be committed as queued
        job = env.job(uuid.UUID(job_id))
        seen_at_send.append((job_id, job.status, job.lease))

    reaped = reap_jobs(settings=env.settings, sessions=env.sessions, send=send)

    assert (reaped.requeued, reaped.failed, reaped.resent) == ([stale], [exhausted], [])
    assert seen_at_send == [(str(stale), JobStatus.queued, None)]
    assert env.job(stale).attempts == 1  # the next claim counts the next attempt
    lost = env.job(exhausted)
    assert (lost.status, lost.error_code) == (JobStatus.failed, "worker_lost")
    assert lost.error_message is not None
    assert lost.error_message.startswith("the worker running this job stopped responding 3 ")
    assert lost.finished_at is not None
    assert (env.job(alive).status, env.job(alive).lease) == (JobStatus.running, "l")

    # Nothing is left to do.
    assert reap_jobs(settings=env.settings, sessions=env.sessions, send=send).requeued == []


def test_a_queued_job_whose_message_was_lost_is_sent_again_once_per_period(
    env: Env, world: World
) -> None:
    old = world.job(env, updated_at=utcnow() - timedelta(hours=1))
    recent = world.job(env)
    sent: list[str] = []
    reaped = reap_jobs(
        settings=env.settings, sessions=env.sessions, send=sent.append, resend_queued_after_s=600
    )
    assert (reaped.resent, sent) == ([old], [str(old)])
    assert reap_jobs(settings=env.settings, sessions=env.sessions, send=sent.append).resent == []
    assert recent not in sent


def test_an_upload_whose_validation_message_was_lost_is_sent_again(env: Env) -> None:
    def validating(model: type[Teacher] | type[DatasetRecord], age_s: float) -> uuid.UUID:
        def add(s: Session) -> uuid.UUID:
            tenant = create_tenant(s)
            if model is Teacher:
                row: Teacher | DatasetRecord = create_teacher(s, env.store, tenant.id)
            else:
                row = create_dataset(s, env.store, tenant.id)
            row.status = AssetStatus.validating
            row.updated_at = utcnow() - timedelta(seconds=age_s)
            return row.id

        return env.add(add)

    old_teacher = validating(Teacher, 3600)
    old_dataset = validating(DatasetRecord, 3600)
    validating(Teacher, 1)  # recent: its message is probably still on its way
    sent: list[tuple[str, str]] = []
    runs: list[str] = []

    def send_task(name: str, row_id: str) -> None:
        sent.append((name, row_id))

    reaped = reap_jobs(
        settings=env.settings, sessions=env.sessions, send=runs.append, send_task=send_task
    )
    assert sorted(reaped.revalidated) == sorted([old_teacher, old_dataset])
    assert sorted(sent) == sorted(
        [(VALIDATE_TEACHER, str(old_teacher)), (VALIDATE_DATASET, str(old_dataset))]
    )
    # The clock restarted: the next round sends nothing.
    again = reap_jobs(
        settings=env.settings, sessions=env.sessions, send=runs.append, send_task=send_task
    )
    assert again.revalidated == []
    assert runs == []


def test_a_broker_outage_while_sending_does_not_stop_the_reaper(env: Env, world: World) -> None:
    first = running(env, world, attempts=1, age_s=env.settings.heartbeat_timeout_s + 5)
    second = running(env, world, attempts=1, age_s=env.settings.heartbeat_timeout_s + 6)

    def send(_: str) -> None:
        raise ConnectionError("broker down")

    reaped = reap_jobs(settings=env.settings, sessions=env.sessions, send=send)
    assert sorted(map(str, reaped.requeued)) == sorted([str(first), str(second)])
    # Both are queued; their messages go out with the lost-message resend later.
    assert {env.job(first).status, env.job(second).status} == {JobStatus.queued}
