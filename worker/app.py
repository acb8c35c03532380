"""The Celery application of the workers: ``celery -A worker.app worker -Q gpu,default``.

GPU workers run ``-c 1 --max-tasks-per-child 1``: every job gets a fresh child process,
so GPU memory and CUDA state never carry over. The parent process must never initialise
CUDA (a forked child cannot use it then): nothing here touches ``torch.cuda``.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init

from store.queue import make_celery
from store.settings import settings
from worker import resources

celery = make_celery(settings)
celery.conf.include = ["worker.tasks"]


@worker_process_init.connect
def _fresh_child(**_: Any) -> None:
    # A forked child must not share the parent's database connections or S3 client.
    resources.reset()
