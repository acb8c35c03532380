"""Finding jobs whose worker died, and giving them another attempt.

A running job's heartbeat is renewed every ``heartbeat_interval_s``. Once it is older than
``heartbeat_timeout_s`` the worker is gone (killed, out of memory, cut off): the job goes
back to ``queued`` and its message is sent again, and the next attempt resumes from the
last checkpoint. A job that has used ``max_attempts`` fails with ``worker_lost``, so a job
that kills its worker every time (a GPU out-of-memory abort) does not loop forever.

Messages are sent after the commit that requeued the job. A message lost on the way (the
broker was down when the API or the reaper sent it, or restarted without persistence) is
covered too: a job ``queued``, or a teacher or dataset ``validating``, untouched for
``KDSERVE_RESEND_AFTER_S`` gets its message sent again. Extra messages are harmless: only
one attempt can claim a job, and a validation writes only while the row is ``validating``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy.orm import Session, sessionmaker

from store.db import transaction
from store.models import DatasetRecord, Teacher, utcnow
from store.queue import VALIDATE_DATASET, VALIDATE_TEACHER
from store.repositories.assets import AssetRepository
from store.repositories.runs import RunRepository
from store.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Reaped:
    requeued: list[uuid.UUID] = field(default_factory=list)
    failed: list[uuid.UUID] = field(default_factory=list)
    resent: list[uuid.UUID] = field(default_factory=list)
    revalidated: list[uuid.UUID] = field(default_factory=list)


def reap_jobs(
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    send: Callable[[str], None],
    send_task: Callable[[str, str], None] | None = None,
    now: datetime | None = None,
    resend_queued_after_s: float | None = None,
) -> Reaped:
    """Requeue (and re-send) or fail every job with a stale heartbeat; re-send the message
    of jobs queued, and uploads validating, too long (default ``settings.resend_after_s``).
    ``send(job_id)`` sends a run message, ``send_task(name, id)`` a validation message."""
    now = now or utcnow()
    if resend_queued_after_s is None:
        resend_queued_after_s = settings.resend_after_s
    stale_before = now - timedelta(seconds=settings.heartbeat_timeout_s)
    reaped = Reaped()
    with sessions() as session:
        stale = RunRepository(session).stale_running(stale_before=stale_before)
    for job_id in stale:
        with transaction(sessions) as session:
            repo = RunRepository(session)
            max_attempts = settings.max_attempts
            if repo.requeue(job_id, stale_before=stale_before, max_attempts=max_attempts, now=now):
                reaped.requeued.append(job_id)
            elif repo.fail_lost(
                job_id, stale_before=stale_before, max_attempts=max_attempts, now=now
            ):
                reaped.failed.append(job_id)
                log.warning("job %s: its worker stopped responding too often; failed", job_id)
                continue
            else:
                continue  # a heartbeat arrived, or another reaper got there first
        log.warning("job %s: its worker stopped responding; requeued", job_id)
        _send(send, job_id)  # after the commit: the claim must find the job queued

    if resend_queued_after_s is not None:
        queued_before = now - timedelta(seconds=resend_queued_after_s)
        with sessions() as session:
            waiting = RunRepository(session).unclaimed(queued_before=queued_before)
        for job_id in waiting:
            with transaction(sessions) as session:
                if not RunRepository(session).touch_queued(
                    job_id, queued_before=queued_before, now=now
                ):
                    continue
            log.info(
                "job %s: queued for over %.0f s; sending its message again",
                job_id,
                resend_queued_after_s,
            )
            reaped.resent.append(job_id)
            _send(send, job_id)
        if send_task is not None:
            # Never while a check may still be running: it leaves the row untouched until done.
            wait_s = max(resend_queued_after_s, settings.validation_time_limit_s + 60)
            before = now - timedelta(seconds=wait_s)
            reaped.revalidated = _resend_validations(sessions, send_task, before, now)
    return reaped


def _resend_validations(
    sessions: sessionmaker[Session],
    send_task: Callable[[str, str], None],
    before: datetime,
    now: datetime,
) -> list[uuid.UUID]:
    sent = []
    for model, task in ((Teacher, VALIDATE_TEACHER), (DatasetRecord, VALIDATE_DATASET)):
        with sessions() as session:
            waiting = AssetRepository(session).stale_validating(model, before=before)
        for row_id in waiting:
            with transaction(sessions) as session:
                repo = AssetRepository(session)
                if not repo.touch_validating(model, row_id, before=before, now=now):
                    continue
            log.info("%s %s: still validating; sending its message again", task, row_id)
            sent.append(row_id)
            _send(partial(send_task, task), row_id)
    return sent


def _send(send: Callable[[str], None], job_id: uuid.UUID) -> None:
    try:
        send(str(job_id))
    except Exception:  # the broker is down: the job stays queued and is re-sent later
        log.exception("job %s: could not send its message; will retry", job_id)
