"""Celery tasks: thin wrappers that take ids and hand the process's resources to the code
in ``worker.validation``, ``worker.runner`` and ``worker.reaper``."""

from __future__ import annotations

from store.queue import REAP_JOBS, RUN_JOB, VALIDATE_DATASET, VALIDATE_TEACHER
from worker.app import celery
from worker.reaper import reap_jobs
from worker.resources import resources
from worker.runner import run_job
from worker.validation import validate_dataset, validate_teacher


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
    reap_jobs(
        settings=r.settings,
        sessions=r.sessions,
        send=lambda job_id: celery.send_task(RUN_JOB, args=[job_id], queue=queue),
        send_task=lambda name, row_id: celery.send_task(name, args=[row_id]),
    )
