"""What a delivery's body holds: the job as ``GET /v1/jobs/{id}`` returns it (the API's own
schema and conversion, so the two never drift apart), wrapped as Standard Webhooks suggests
(``type``, ``timestamp``, ``data``). The worker's dispatcher builds it from here."""

from __future__ import annotations

from typing import cast

from api.jobs.service import to_public
from store.models import Job, JobEvent

from .schemas import EventType, WebhookEvent


def event_type(event: JobEvent) -> EventType:
    return cast(EventType, f"job.{event.status}")


def event_body(job: Job, event: JobEvent) -> str:
    """The JSON text sent, byte for byte, on every attempt of this event's deliveries."""
    payload = WebhookEvent(type=event_type(event), timestamp=event.created_at, data=to_public(job))
    return payload.model_dump_json()
