"""The Celery application: one configuration for the API (which only sends tasks by name)
and the workers (which register them in ``worker.tasks``)."""

from __future__ import annotations

from celery import Celery

from store.settings import Settings

# Task names: "<domain>.<verb>". The API sends them by name and never imports the worker.
VALIDATE_TEACHER = "teachers.validate"
VALIDATE_DATASET = "datasets.validate"
RUN_JOB = "distill.run"
REAP_JOBS = "jobs.reap"
DISPATCH_WEBHOOKS = "webhooks.dispatch"

# Fair share on the broker: a message's priority is its row's rank among its tenant's work
# not yet done (0 for a tenant's first queued job or validation, 1 for its second, ...), and
# workers take lower numbers first (FIFO within one). So a tenant's backlog sits behind every
# other tenant's first items instead of in front of them. Redis keeps one list per level
# (kombu's ``priority_steps``); ranks past the last level share it. Kombu's SQLAlchemy
# transport (embedded mode) has no priorities: there the queue is FIFO.
PRIORITY_LEVELS = 10


def fair_priority(rank: int) -> int:
    """The broker priority of a tenant's item with ``rank`` items of its own before it."""
    return min(max(rank, 0), PRIORITY_LEVELS - 1)


def make_celery(settings: Settings) -> Celery:
    app = Celery("kdserve", broker=settings.broker)
    app.conf.update(
        task_ignore_result=True,  # state lives in the database, not a result backend
        task_acks_late=True,  # a job's message is acked when it ends, not when it starts
        task_reject_on_worker_lost=True,  # a killed child requeues its message
        worker_prefetch_multiplier=1,
        task_time_limit=settings.job_time_limit_s,
        task_soft_time_limit=max(1, settings.job_time_limit_s - 60),
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_routes={RUN_JOB: {"queue": settings.queue}},
        task_default_queue=settings.default_queue,
        beat_schedule={
            "reap-stale-jobs": {
                "task": REAP_JOBS,
                "schedule": settings.reap_interval_s,
                # A busy worker must not find a pile of stale sweeps when it frees up.
                "options": {"expires": settings.reap_interval_s},
            },
            "dispatch-webhooks": {
                "task": DISPATCH_WEBHOOKS,
                "schedule": settings.webhook_dispatch_interval_s,
                # Rounds must not pile up behind a busy worker: a late one is dropped.
                "options": {"expires": settings.webhook_dispatch_interval_s},
            },
        },
        worker_hijack_root_logger=False,
    )
    return app


def _transport_options(settings: Settings) -> dict[str, object]:
    if settings.broker.startswith(("redis://", "rediss://")):
        # Redis redelivers a message unacked for this long (celery#5935): keep it above the
        # job time limit, or a long job runs twice.
        return {
            "visibility_timeout": settings.visibility_timeout_s,
            "priority_steps": list(range(PRIORITY_LEVELS)),  # see fair_priority
        }
    return {}  # kombu's SQLAlchemy transport hands these to create_engine()
