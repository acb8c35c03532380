"""Celery tasks: thin wrappers that take ids and hand the process's resources to the code
in ``worker.validation``, ``worker.runner``, ``worker.reaper`` and ``worker.webhooks``."""

from __future__ import annotations

import uuid

from store.models import DatasetRecord, Teacher
from store.queue import (
    DISPATCH_WEBHOOKS,
    REAP_JOBS,
    RUN_JOB,
    VALIDATE_DATASET,
    VALIDATE_TEACHER,
    fair_priority,
)
from store.repositories.limits import job_rank, validation_rank
from worker.app import celery
from worker.reaper import reap_jobs
from worker.resources import resources
from worker.runner import run_job
from worker.validation import validate_dataset, validate_teacher
from worker.webhooks import dispatch


@celery.task(name=VALIDATE_TEACHER)
def validate_teacher_task(teacher_id: str) -> None:
    r = resources()
    validate_teacher(teacher_id, settings=r.settings, sessions=r.sessions, store=r.store)


@celery.task(name=VALIDATE_DATASET)
def validate_dataset_task(dataset_id: str) -> None:
    r = resources()
    validate_dataset(dataset_id, settings=r.settings, sessions=r.sessions, store=r.store)


@celery.task(name=RUN_JOB)
def run_job_task(job_id: str) -> None:
    r = resources()
    run_job(job_id, settings=r.settings, sessions=r.sessions, store=r.store)


@celery.task(name=REAP_JOBS)
def reap_jobs_task() -> None:
    r = resources()
    queue = r.settings.queue

    def send(job_id: str) -> None:
        # Re-sent messages keep their place in the fair share: the job's rank in its tenant.
        with r.sessions() as session:
            rank = job_rank(session, uuid.UUID(job_id))
        celery.send_task(RUN_JOB, args=[job_id], queue=queue, priority=fair_priority(rank))

    def send_task(name: str, row_id: str) -> None:
        model = Teacher if name == VALIDATE_TEACHER else DatasetRecord
        with r.sessions() as session:
            rank = validation_rank(session, model, uuid.UUID(row_id))
        celery.send_task(name, args=[row_id], priority=fair_priority(rank))

    reap_jobs(settings=r.settings, sessions=r.sessions, send=send, send_task=send_task)


@celery.task(name=DISPATCH_WEBHOOKS)
def dispatch_webhooks_task() -> None:
    r = resources()
    dispatch(settings=r.settings, sessions=r.sessions)
