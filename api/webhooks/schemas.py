from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.jobs.schemas import JobPublic
from api.kit.schemas import PLAIN_TEXT
from store.models import DeliveryState
from store.webhook_targets import MAX_URL_LENGTH


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=MAX_URL_LENGTH,
        description="http(s) URL without credentials whose host resolves to public addresses only",
        examples=["https://example.com/kdserve-hooks"],
    )
    description: str = Field(default="", max_length=200, pattern=PLAIN_TEXT)


class WebhookPublic(BaseModel):
    id: uuid.UUID
    url: str
    description: str
    created_at: datetime


class WebhookCreated(WebhookPublic):
    secret: str = Field(
        description="the signing secret, `whsec_` + base64 of 32 random bytes; shown only "
        "in this response: keep it to verify each delivery's webhook-signature"
    )


class WebhookList(BaseModel):
    items: list[WebhookPublic]
    next_cursor: str | None


class DeliveryAttempt(BaseModel):
    at: datetime
    status_code: int | None = Field(description="the endpoint's answer; null if none came")
    error: str | None = Field(description="why the attempt failed (timeout, refused address…)")
    duration_ms: int


EventType = Literal["job.succeeded", "job.failed", "job.canceled"]


class DeliveryPublic(BaseModel):
    id: uuid.UUID = Field(description="the `webhook-id` header of every attempt")
    event_type: EventType
    job_id: uuid.UUID
    state: DeliveryState = Field(
        description="pending (retried at next_attempt_at), delivered (a 2xx), failed (out of "
        "attempts)"
    )
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    attempt_log: list[DeliveryAttempt]


class DeliveryList(BaseModel):
    items: list[DeliveryPublic]
    next_cursor: str | None


class WebhookEvent(BaseModel):
    """The body of each delivery (the Standard Webhooks payload structure)."""

    type: EventType
    timestamp: datetime = Field(description="when the job reached this state")
    data: JobPublic = Field(description="the job, as `GET /v1/jobs/{id}` returns it")
