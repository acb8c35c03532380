"""Registering, listing and deleting a tenant's webhook endpoints; reading their deliveries.

The URL is checked (``store.webhook_targets``: form, then every address its host resolves
to) before a session is opened, so a slow DNS answer never holds a database session.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from typing import cast

import anyio
from sqlalchemy.orm import Session

from api.kit.deps import parse_id
from api.kit.errors import Conflict, Invalid, NotFound
from store.models import DeliveryState, WebhookDelivery, WebhookEndpoint
from store.repositories.limits import lock_tenant
from store.repositories.webhooks import WebhookRepository
from store.settings import Settings
from store.webhook_targets import UrlRefused, parse_url, resolve

from .schemas import (
    DeliveryAttempt,
    DeliveryPublic,
    EventType,
    WebhookCreate,
    WebhookCreated,
    WebhookPublic,
)

# Registration waits at most this long for DNS (delivery has its own, webhook_timeout_s).
RESOLVE_TIMEOUT_S = 5.0


def new_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes: Standard Webhooks asks for 24 to 64 bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def check_url(url: str, settings: Settings) -> None:
    """A 422 naming the problem unless kdserve may send to ``url`` now."""
    try:
        target = parse_url(url)
        with anyio.fail_after(min(RESOLVE_TIMEOUT_S, settings.webhook_timeout_s)):
            await resolve(target, settings.webhook_allowed_networks)
    except UrlRefused as exc:
        raise _refused(str(exc)) from None
    except TimeoutError:
        raise _refused(
            f"resolving the URL's host took over {RESOLVE_TIMEOUT_S:g} s; check the host name"
        ) from None


def _refused(message: str) -> Invalid:
    return Invalid(
        f"url: {message}", errors=[{"loc": ["url"], "msg": message, "type": "url_refused"}]
    )


def create(
    session: Session, *, tenant_id: uuid.UUID, body: WebhookCreate, settings: Settings
) -> WebhookCreated:
    """Add the endpoint, under the tenant's row lock so that concurrent requests count each
    other against ``KDSERVE_MAX_WEBHOOKS_PER_TENANT``."""
    tenant = lock_tenant(session, tenant_id)
    repo = WebhookRepository(session, tenant.id)
    limit = settings.max_webhooks_per_tenant
    if repo.count() >= limit:
        raise Conflict(
            f"this tenant has {limit} webhooks, the limit (KDSERVE_MAX_WEBHOOKS_PER_TENANT); "
            "delete one first (DELETE /v1/webhooks/{id})"
        )
    secret = new_secret()
    row = repo.add(url=body.url, description=body.description, secret=secret)
    return WebhookCreated(**to_public(row).model_dump(), secret=secret)


def get(session: Session, *, tenant_id: uuid.UUID, endpoint_id: str) -> WebhookEndpoint:
    """The tenant's endpoint with this path id, else a 404 (another tenant's too)."""
    repo = WebhookRepository(session, tenant_id)
    row = repo.get(parse_id(endpoint_id, "webhook"))
    if row is None:
        raise NotFound(f"no webhook {endpoint_id}")
    return row


def to_public(row: WebhookEndpoint) -> WebhookPublic:
    return WebhookPublic.model_validate(row, from_attributes=True)


def delivery_to_public(row: WebhookDelivery) -> DeliveryPublic:
    return DeliveryPublic(
        id=row.id,
        event_type=cast(EventType, row.event_type),
        job_id=row.job_id,
        state=row.state,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at if row.state == DeliveryState.pending else None,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        delivered_at=row.delivered_at,
        created_at=row.created_at,
        attempt_log=[DeliveryAttempt.model_validate(a) for a in row.attempt_log],
    )
