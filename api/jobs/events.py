"""A job's events over HTTP: pages of JSON, or a stream of server-sent events.

The stream polls the database (every ``KDSERVE_EVENT_POLL_INTERVAL_S``) in a short
transaction of its own, holding a session slot only for that read: a stream waiting for
the next epoch holds a connection to the client and nothing else. The database is the
only source, so a stream that resumes (``Last-Event-ID``) gets exactly the events after
the one it saw, whichever process serves it. The frames are written by FastAPI's own SSE
encoder (``fastapi.sse.format_sse_event``); the response is a plain streaming response
because the same path answers JSON too.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial

import anyio
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.types import Receive, Scope, Send

from api.kit import errors
from api.kit.deps import Services, in_transaction
from store.models import JobEvent, JobStatus
from store.repositories import events

from .schemas import EventList, EventPublic

log = logging.getLogger(__name__)

STREAM_BATCH = 100  # events read per poll; a stream behind by more reads again at once
RETRY_MS = 2000  # how long an EventSource waits before it reconnects


def to_public(e: JobEvent) -> EventPublic:
    # Validated: kind and status are the columns' plain strings.
    fields = {"id": e.seq, "kind": e.kind, "status": e.status, "data": e.data}
    return EventPublic.model_validate({**fields, "created_at": e.created_at})


def page(batch: events.Batch, limit: int) -> EventList:
    items = [to_public(e) for e in batch.events[:limit]]
    more = len(batch.events) > limit
    return EventList(items=items, next_after=items[-1].id if more else None)


def wants_stream(accept: str | None) -> bool:
    """Whether ``Accept`` asks for ``text/event-stream`` (any ``q`` above 0)."""
    for part in (accept or "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media.lower() == "text/event-stream" and "q=0" not in params:
            return True
    return False


def resume_point(last_event_id: str | None, after: int | None) -> int:
    """Where a stream starts: after ``Last-Event-ID`` (what a reconnecting EventSource
    sends), else after ``?after``, else from the first event. An id that is not a number
    (no event of this service has one) starts from the first event."""
    value = (last_event_id or "").strip()
    if value.isascii() and value.isdigit():  # not "²", which isdigit() also accepts
        return int(value)
    return after or 0


def is_terminal(e: EventPublic) -> bool:
    """The job's last event: the report, or a final state other than succeeded (whose
    report follows it, written in the same transaction)."""
    return e.kind == "report" or (
        e.kind == "state"
        and e.status is not None
        and e.status.final
        and e.status != JobStatus.succeeded
    )


def frame(e: EventPublic) -> bytes:
    return format_sse_event(data_str=e.model_dump_json(), event=e.kind, id=str(e.id))


async def stream(services: Services, job_id: uuid.UUID, after: int) -> AsyncIterator[bytes]:
    """The job's events after ``after`` as SSE frames, as they are written; ends once the
    job is final and every event was sent, after ``KDSERVE_EVENT_STREAM_MAX_S``, or when
    the database cannot be read (the client resumes from its last id)."""
    settings = services.settings
    yield format_sse_event(comment="kdserve job events", retry=RETRY_MS)
    deadline = time.monotonic() + settings.event_stream_max_s
    quiet_since = time.monotonic()
    while True:
        read = partial(events.after, job_id=job_id, after=after, limit=STREAM_BATCH)
        try:
            batch = await in_transaction(services, read)
        except (OperationalError, PoolTimeout) as exc:
            log.warning("job %s: event stream ended, the database is unavailable: %s", job_id, exc)
            return
        for event in batch.events:
            public = to_public(event)
            yield frame(public)
            after = public.id
            quiet_since = time.monotonic()
        if len(batch.events) == STREAM_BATCH:
            continue  # behind: read on without waiting
        if batch.status is None or batch.status.final:
            return  # final, and its last events were in this batch or an earlier one
        if time.monotonic() >= deadline:
            return
        if time.monotonic() - quiet_since >= settings.event_keepalive_s:
            yield KEEPALIVE_COMMENT  # keeps proxies from closing an idle connection
            quiet_since = time.monotonic()
        await anyio.sleep(settings.event_poll_interval_s)


class EventStream(EventSourceResponse):
    """A stream that counts against ``KDSERVE_MAX_EVENT_STREAMS[_PER_TENANT]`` from its
    first byte to its last: the slot is taken and given back in the one call that sends
    it, so no path (a refused stream, a client gone mid-stream) can leak one."""

    def __init__(self, content: AsyncIterator[bytes], *, services: Services, tenant: uuid.UUID):
        super().__init__(
            content,
            # No buffering by proxies (nginx honours this header), no caching.
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.services, self.tenant = services, tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self.services.settings
        try:
            self.services.streams.take(
                self.tenant,
                per_tenant=settings.max_event_streams_per_tenant,
                total=settings.max_event_streams,
            )
        except errors.TooManyRequests as refused:
            await errors.render(refused)(scope, receive, send)
            return
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.services.streams.give_back(self.tenant)
