"""Finding jobs whose worker died, and giving them another attempt.

A running job's heartbeat is renewed every ``heartbeat_interval_s``. Once it is older than
``heartbeat_timeout_s`` the worker is gone (killed, out of memory, cut off): the job goes
back to ``queued`` and its message is sent again, and the next attempt resumes from the
last checkpoint. A job that has used ``max_attempts`` fails with ``worker_lost``, so a job
that kills its worker every time (a GPU out-of-memory abort) does not loop forever.

Messages are sent after the commit that requeued the job. A message lost on the way (the
broker was down when the API or the reaper sent it) is covered too: a job ``queued`` and
untouched for ``resend_queued_after_s`` gets its message sent again. Extra messages are
harmless, since only one attempt can claim a job.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from store.db import transaction
from store.models import utcnow
from store.repositories.runs import RunRepository
from store.settings import Settings

log = logging.getLogger(__name__)

# Long enough that a job waiting its turn behind others is rarely sent twice.
RESEND_QUEUED_AFTER_S = 600.0


@dataclass
class Reaped:
    requeued: list[uuid.UUID] = field(default_factory=list)
    failed: list[uuid.UUID] = field(default_factory=list)
    resent: list[uuid.UUID] = field(default_factory=list)


def reap_jobs(
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    send: Callable[[str], None],
    now: datetime | None = None,
    resend_queued_after_s: float | None = RESEND_QUEUED_AFTER_S,
) -> Reaped:
    """Requeue (and re-send) or fail every job with a stale heartbeat; re-send the message
    of jobs queued too long. ``send(job_id)`` sends the run message."""
    now = now or utcnow()
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
    return reaped


def _send(send: Callable[[str], None], job_id: uuid.UUID) -> None:
    try:
        send(str(job_id))
    except Exception:  # the broker is down: the job stays queued and is re-sent later
        log.exception("job %s: could not send its message; will retry", job_id)
