"""Webhook endpoints and their deliveries (:class:`store.models.WebhookEndpoint`,
:class:`store.models.WebhookDelivery`).

:class:`WebhookRepository` is the API's, scoped to one tenant: another tenant's endpoint is
never found, listed or deleted. The functions below it are the dispatcher's
(``worker/webhooks.py``), which serves every tenant:

- :func:`undelivered` finds final-state events (``job_events``, kind ``state``) of each
  endpoint's tenant that have no delivery row for that endpoint yet;
- :func:`add_deliveries` inserts them, ignoring a row another dispatcher inserted first
  (the unique ``(endpoint_id, event_id)``: one delivery per pair, whatever the races);
- :func:`claim_due` takes due deliveries for one attempt each (``FOR UPDATE SKIP LOCKED`` on
  Postgres, so two dispatchers never take the same row) and marks them with a lease;
- :func:`record_attempt` writes an attempt's outcome, only under the lease it was taken with.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.models import (
    DeliveryState,
    Job,
    JobEvent,
    WebhookDelivery,
    WebhookEndpoint,
)
from store.repositories.common import page

FINAL_STATES = ("succeeded", "failed", "canceled")


@dataclass
class WebhookRepository:
    session: Session
    tenant_id: uuid.UUID

    def count(self) -> int:
        return int(
            self.session.scalar(
                select(func.count())
                .select_from(WebhookEndpoint)
                .where(WebhookEndpoint.tenant_id == self.tenant_id)
            )
            or 0
        )

    def add(self, *, url: str, description: str, secret: str) -> WebhookEndpoint:
        row = WebhookEndpoint(
            tenant_id=self.tenant_id, url=url, description=description, secret=secret
        )
        self.session.add(row)
        self.session.flush()
        return row

    def get(self, endpoint_id: uuid.UUID) -> WebhookEndpoint | None:
        return self.session.scalars(
            select(WebhookEndpoint).where(
                WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == self.tenant_id
            )
        ).first()

    def list_page(
        self, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[WebhookEndpoint]:
        q = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == self.tenant_id)
        return list(self.session.scalars(page(q, WebhookEndpoint, after=after, limit=limit)))

    def delete(self, endpoint: WebhookEndpoint) -> None:
        """The endpoint and its deliveries (``ON DELETE CASCADE``); an attempt in flight
        finds no row to record its outcome in and records nothing."""
        self.session.delete(endpoint)
        self.session.flush()

    def deliveries_page(
        self, endpoint: WebhookEndpoint, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[WebhookDelivery]:
        q = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
        return list(self.session.scalars(page(q, WebhookDelivery, after=after, limit=limit)))


# -- the dispatcher ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Undelivered:
    endpoint_id: uuid.UUID
    event: JobEvent


def undelivered(session: Session, *, since: datetime, limit: int) -> list[Undelivered]:
    """Final-state events with no delivery row for an endpoint of their job's tenant, oldest
    first. Only events written after the endpoint was registered, and after ``since`` (the
    oldest event still delivered), count: a new endpoint does not receive the past."""
    has_row = exists().where(
        WebhookDelivery.endpoint_id == WebhookEndpoint.id,
        WebhookDelivery.event_id == JobEvent.id,
    )
    q = (
        select(WebhookEndpoint.id, JobEvent)
        .join(Job, Job.id == JobEvent.job_id)
        .join(WebhookEndpoint, WebhookEndpoint.tenant_id == Job.tenant_id)
        .where(
            JobEvent.kind == "state",
            JobEvent.status.in_(FINAL_STATES),
            JobEvent.created_at >= since,
            JobEvent.created_at >= WebhookEndpoint.created_at,
            ~has_row,
        )
        .order_by(JobEvent.id, WebhookEndpoint.id)
        .limit(limit)
    )
    return [Undelivered(endpoint_id, event) for endpoint_id, event in session.execute(q)]


def add_deliveries(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert delivery rows (``endpoint_id``, ``event_id``, ``job_id``, ``event_type``,
    ``body``, ``next_attempt_at``); a pair that has a row already keeps it."""
    if not rows:
        return
    values = [
        {
            "id": uuid.uuid4(),
            "state": DeliveryState.pending,
            "attempts": 0,
            "attempt_log": [],
            "created_at": row["next_attempt_at"],
            **row,
        }
        for row in rows
    ]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(
        insert(WebhookDelivery)
        .values(values)
        .on_conflict_do_nothing(
            index_elements=[WebhookDelivery.endpoint_id, WebhookDelivery.event_id]
        )
    )


@dataclass(frozen=True)
class Claimed:
    """One delivery taken for one attempt."""

    id: uuid.UUID
    lease: str
    attempts: int  # before this attempt
    url: str
    secret: str
    body: str


def claim_due(
    session: Session, *, now: datetime, limit: int, per_endpoint: int, hold_s: float
) -> list[Claimed]:
    """Take up to ``limit`` pending deliveries whose time has come, at most ``per_endpoint``
    of one endpoint (so that one endpoint's backlog does not fill a round), oldest due
    first. Each gets a fresh lease and is not due again for ``hold_s`` (longer than an
    attempt): if this dispatcher dies mid-attempt, another retries it then."""
    ranked = (
        select(
            WebhookDelivery.id,
            func.row_number()
            .over(
                partition_by=WebhookDelivery.endpoint_id,
                order_by=(WebhookDelivery.next_attempt_at, WebhookDelivery.id),
            )
            .label("n"),
        )
        .where(
            WebhookDelivery.state == DeliveryState.pending,
            WebhookDelivery.next_attempt_at <= now,
        )
        .subquery()
    )
    rows = session.execute(
        select(WebhookDelivery, WebhookEndpoint.url, WebhookEndpoint.secret)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookDelivery.id.in_(select(ranked.c.id).where(ranked.c.n <= per_endpoint)),
            # Read again under the lock: another dispatcher may have taken it meanwhile.
            WebhookDelivery.state == DeliveryState.pending,
            WebhookDelivery.next_attempt_at <= now,
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
        # Lock the delivery rows only; the endpoint row stays free for the API to delete.
        .with_for_update(skip_locked=True, of=WebhookDelivery)
    ).all()
    claimed = []
    hold_until = now + timedelta(seconds=hold_s)
    for delivery, url, secret in rows:
        lease = str(uuid.uuid4())
        # Compare-and-set as well: where nothing locks rows (SQLite), a dispatcher that
        # read the row before another took it changes nothing.
        taken = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery.id,
                WebhookDelivery.state == DeliveryState.pending,
                WebhookDelivery.next_attempt_at <= now,
            )
            .values(lease=lease, next_attempt_at=hold_until)
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            continue
        claimed.append(Claimed(delivery.id, lease, delivery.attempts, url, secret, delivery.body))
    return claimed


def record_attempt(
    session: Session,
    claimed: Claimed,
    *,
    entry: dict[str, Any],
    delivered: bool,
    give_up: bool,
    next_attempt_at: datetime,
    now: datetime,
) -> bool:
    """Record one attempt's outcome (``entry`` goes on the attempt log) and what comes next:
    delivered, failed for good (``give_up``), or another attempt at ``next_attempt_at``.
    False, and nothing written, when the lease is no longer this attempt's (its endpoint was
    deleted, or the attempt outlived its hold and another dispatcher took the delivery)."""
    delivery = session.scalars(
        select(WebhookDelivery)
        .where(and_(WebhookDelivery.id == claimed.id, WebhookDelivery.lease == claimed.lease))
        .with_for_update()
    ).first()
    if delivery is None:
        return False
    delivery.attempts += 1
    delivery.attempt_log = [*delivery.attempt_log, entry]
    delivery.last_status_code = entry.get("status_code")
    delivery.last_error = entry.get("error")
    delivery.lease = None
    if delivered:
        delivery.state = DeliveryState.delivered
        delivery.delivered_at = now
    elif give_up:
        delivery.state = DeliveryState.failed
    else:
        delivery.next_attempt_at = next_attempt_at
    session.flush()
    return True
