"""A tenant's webhook endpoints: register, list, get, delete; and each one's deliveries.
The worker's dispatcher (``worker/webhooks.py``) sends them."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from api.kit.deps import ServicesDep, SessionDep, TenantDep, in_transaction
from api.kit.errors import problems
from api.kit.pagination import decode_cursor, split_page
from api.kit.schemas import DEFAULT_PAGE, MAX_PAGE
from store.repositories.webhooks import WebhookRepository

from . import service
from .schemas import (
    DeliveryList,
    WebhookCreate,
    WebhookCreated,
    WebhookEvent,
    WebhookList,
    WebhookPublic,
)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

# The OpenAPI document's `webhooks` section: what kdserve sends to a registered URL.
events = APIRouter()


@events.post("job.finished", status_code=status.HTTP_200_OK)
def job_finished(body: WebhookEvent) -> None:
    """A job reached a final state (`type`: job.succeeded, job.failed or job.canceled).
    Headers webhook-id, webhook-timestamp and webhook-signature follow Standard Webhooks;
    answer 2xx within KDSERVE_WEBHOOK_TIMEOUT_S, or the delivery is retried."""


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    responses=problems(401, 409, 422),
)
async def create_webhook(
    body: WebhookCreate, tenant: TenantDep, services: ServicesDep, response: Response
) -> WebhookCreated:
    """Register an endpoint; the response holds its signing secret, shown only this once."""
    # DNS first, holding no database session (a slow resolver must not take a slot).
    await service.check_url(body.url, services.settings)
    created = await in_transaction(
        services,
        partial(service.create, tenant_id=tenant.id, body=body, settings=services.settings),
    )
    response.headers["Location"] = f"{router.prefix}/{created.id}"
    return created


@router.get("", response_model=WebhookList, responses=problems(401, 422))
def list_webhooks(
    session: SessionDep,
    tenant: TenantDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
) -> WebhookList:
    """List the tenant's webhook endpoints, newest first (without their secrets)."""
    rows = WebhookRepository(session, tenant.id).list_page(
        after=decode_cursor(cursor) if cursor else None, limit=limit
    )
    page, nxt = split_page(rows, limit)
    return WebhookList(items=[service.to_public(r) for r in page], next_cursor=nxt)


@router.get("/{webhook_id}", response_model=WebhookPublic, responses=problems(401, 404))
def get_webhook(webhook_id: str, session: SessionDep, tenant: TenantDep) -> WebhookPublic:
    """One of the tenant's webhook endpoints (without its secret)."""
    return service.to_public(service.get(session, tenant_id=tenant.id, endpoint_id=webhook_id))


@router.delete(
    "/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(401, 404)
)
def delete_webhook(webhook_id: str, session: SessionDep, tenant: TenantDep) -> None:
    """Delete an endpoint and its delivery records; nothing more is sent to it."""
    row = service.get(session, tenant_id=tenant.id, endpoint_id=webhook_id)
    WebhookRepository(session, tenant.id).delete(row)


@router.get(
    "/{webhook_id}/deliveries", response_model=DeliveryList, responses=problems(401, 404, 422)
)
def list_deliveries(
    webhook_id: str,
    session: SessionDep,
    tenant: TenantDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
) -> DeliveryList:
    """The endpoint's deliveries, newest first, each with every attempt."""
    row = service.get(session, tenant_id=tenant.id, endpoint_id=webhook_id)
    rows = WebhookRepository(session, tenant.id).deliveries_page(
        row, after=decode_cursor(cursor) if cursor else None, limit=limit
    )
    page, nxt = split_page(rows, limit)
    return DeliveryList(items=[service.delivery_to_public(d) for d in page], next_cursor=nxt)
