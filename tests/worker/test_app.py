"""The Celery application the workers start with ``celery -A worker.app worker``."""

from __future__ import annotations

import torch

from store.queue import DISPATCH_WEBHOOKS, REAP_JOBS, RUN_JOB, VALIDATE_DATASET, VALIDATE_TEACHER


def test_the_worker_app_registers_every_task_by_name_without_touching_cuda() -> None:
    from worker.app import celery

    celery.loader.import_default_modules()  # what `celery worker` does with conf.include
    assert {VALIDATE_TEACHER, VALIDATE_DATASET, RUN_JOB, REAP_JOBS, DISPATCH_WEBHOOKS} <= set(
        celery.tasks
    )
    # The prefork parent must never initialise CUDA: its children could not use it.
    assert not torch.cuda.is_initialized()
