"""The webhook dispatcher: final job states, POSTed to the tenant's endpoints, signed.

An outbox over the job event log. Each round (Celery beat's ``webhooks.dispatch``, every
``KDSERVE_WEBHOOK_DISPATCH_INTERVAL_S``, on the ``default`` queue):

1. every final-state event (``job_events``: kind ``state``, status succeeded, failed or
   canceled) that has no delivery row for an endpoint of its job's tenant gets one, with
   its body built once (:func:`api.webhooks.payload.event_body`), so that every attempt
   sends the same bytes under the same ``webhook-id``. The unique (endpoint, event) keeps
   it to one row whatever the races;
2. due deliveries are taken for one attempt each (``FOR UPDATE SKIP LOCKED`` and a lease:
   two dispatchers never attempt the same delivery at once), at most
   ``KDSERVE_WEBHOOK_BATCH_SIZE`` and :data:`PER_ENDPOINT` of one endpoint;
3. the attempts run all at once, each bounded as a whole by ``KDSERVE_WEBHOOK_TIMEOUT_S``
   (DNS, connect, send, the status line), so a slow or silent endpoint costs the round at
   most that, whoever else is in it. Each resolves the host again, checks every address
   (``store.webhook_targets``: DNS rebinding is refused at every attempt) and connects to
   the address it checked; redirects are never followed, proxies from the environment never
   used, the response's body never read;
4. each outcome is written under its lease: a 2xx is ``delivered``; anything else
   (another status, a timeout, a refused address) is retried after
   ``min(base * 4**(n-1), max)`` seconds times a random factor in [0.5, 1], until
   ``KDSERVE_WEBHOOK_MAX_ATTEMPTS``, then ``failed``.

Delivery is at least once: a dispatcher that dies after sending but before recording sends
again when the hold runs out. Receivers deduplicate on ``webhook-id``.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from api.webhooks.payload import event_body, event_type
from store.db import transaction
from store.models import Job, utcnow
from store.repositories.webhooks import (
    Claimed,
    add_deliveries,
    claim_due,
    record_attempt,
    undelivered,
)
from store.settings import Settings
from store.webhook_targets import Network, UrlRefused, parse_url, resolve

log = logging.getLogger(__name__)

USER_AGENT = "kdserve-webhooks/1"
PER_ENDPOINT = 4  # attempts to one endpoint in one round
SCAN_LIMIT = 500  # new (endpoint, event) pairs one round turns into deliveries
# A taken delivery is due again after the attempt's timeout plus this, should its
# dispatcher die before recording the outcome.
HOLD_MARGIN_S = 30.0


@dataclass
class Round:
    """What one round did (for tests and logs)."""

    created: int = 0
    attempted: int = 0
    delivered: int = 0
    outcomes: list[Outcome] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def entry(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header: ``v1,`` + base64 of HMAC-SHA256, keyed with the
    secret's base64-decoded bytes, over ``{msg_id}.{timestamp}.{body}`` (Standard Webhooks,
    signed by its reference library ``standardwebhooks``)."""
    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body)


def retry_delay(attempts: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``attempts``-th attempt failed."""
    delay = min(settings.webhook_retry_base_s * 4 ** (attempts - 1), settings.webhook_retry_max_s)
    return delay * (rng or random).uniform(0.5, 1.0)


def dispatch(
    *, settings: Settings, sessions: sessionmaker[Session], now: datetime | None = None
) -> Round:
    """One round: record new deliveries, attempt the due ones, record each outcome."""
    now = now or utcnow()
    done = Round(created=enqueue(settings=settings, sessions=sessions, now=now))
    with transaction(sessions) as session:
        claimed = claim_due(
            session,
            now=now,
            limit=settings.webhook_batch_size,
            per_endpoint=PER_ENDPOINT,
            hold_s=settings.webhook_timeout_s + HOLD_MARGIN_S,
        )
    if not claimed:
        return done
    done.outcomes = anyio.run(attempt_all, claimed, settings)
    for each, outcome in zip(claimed, done.outcomes, strict=True):
        attempts = each.attempts + 1
        give_up = not outcome.ok and attempts >= settings.webhook_max_attempts
        with transaction(sessions) as session:
            recorded = record_attempt(
                session,
                each,
                entry=outcome.entry(),
                delivered=outcome.ok,
                give_up=give_up,
                next_attempt_at=utcnow() + timedelta(seconds=retry_delay(attempts, settings)),
                now=utcnow(),
            )
        if recorded and give_up:
            log.warning("webhook delivery %s failed %d times; giving up", each.id, attempts)
    done.attempted = len(claimed)
    done.delivered = sum(o.ok for o in done.outcomes)
    return done


def enqueue(*, settings: Settings, sessions: sessionmaker[Session], now: datetime) -> int:
    """Give every final-state event without one a delivery row per endpoint of its tenant."""
    since = now - timedelta(seconds=settings.webhook_event_max_age_s)
    with transaction(sessions) as session:
        found = undelivered(session, since=since, limit=SCAN_LIMIT)
        bodies: dict[int, str] = {}
        rows = []
        for pair in found:
            event = pair.event
            if event.id not in bodies:
                job = session.get(Job, event.job_id)
                if job is None:  # deleted meanwhile: its events go with it
                    continue
                bodies[event.id] = event_body(job, event)
            rows.append(
                {
                    "endpoint_id": pair.endpoint_id,
                    "event_id": event.id,
                    "job_id": event.job_id,
                    "event_type": event_type(event),
                    "body": bodies[event.id],
                    "next_attempt_at": now,
                }
            )
        add_deliveries(session, rows)
    return len(rows)


async def attempt_all(
    claimed: Sequence[Claimed], settings: Settings, *, verify: ssl.SSLContext | bool = True
) -> list[Outcome]:
    """One attempt of each delivery, all at once; the outcomes in the same order.
    ``verify``: how TLS certificates are checked (httpx's default: the certifi roots)."""
    outcomes: list[Outcome | None] = [None] * len(claimed)
    async with httpx.AsyncClient(
        verify=verify,
        follow_redirects=False,
        trust_env=False,  # no proxy from the environment: we connect to the checked address
        timeout=settings.webhook_timeout_s,
        # One connection per attempt: a kept connection to one host's address must not carry
        # another host's request.
        limits=httpx.Limits(max_keepalive_connections=0),
    ) as client:

        async def one(i: int) -> None:
            outcomes[i] = await attempt(client, claimed[i], settings)

        async with anyio.create_task_group() as tg:
            for i in range(len(claimed)):
                tg.start_soon(one, i)
    return [o for o in outcomes if o is not None]


async def attempt(client: httpx.AsyncClient, claimed: Claimed, settings: Settings) -> Outcome:
    """POST the delivery once; never raises: what went wrong is the outcome's ``error``."""
    at, start = utcnow(), time.monotonic()
    status_code: int | None = None
    error: str | None = None
    try:
        with anyio.fail_after(settings.webhook_timeout_s):
            status_code = await post(client, claimed, settings.webhook_allowed_networks)
    except TimeoutError:
        error = f"no answer within {settings.webhook_timeout_s:g} s (KDSERVE_WEBHOOK_TIMEOUT_S)"
    except UrlRefused as exc:
        error = str(exc)
    except (httpx.HTTPError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}".rstrip(": ")
    except Exception as exc:  # a bug must cost this attempt, not the round
        log.exception("webhook delivery %s: unexpected error", claimed.id)
        error = f"internal error: {type(exc).__name__}: {exc}"
    if status_code is not None and not 200 <= status_code < 300:
        error = f"the endpoint answered {status_code}" + (
            " (redirects are not followed)" if 300 <= status_code < 400 else ""
        )
    duration_ms = int((time.monotonic() - start) * 1000)
    return Outcome(at=at, status_code=status_code, error=error, duration_ms=duration_ms)


async def post(client: httpx.AsyncClient, claimed: Claimed, allowed: Sequence[Network]) -> int:
    """Resolve and check the host, then POST the body, signed, to the addresses checked, in
    the resolver's order, until one takes the connection."""
    target = parse_url(claimed.url)
    addresses = await resolve(target, allowed)
    timestamp = int(time.time())
    msg_id = str(claimed.id)
    headers = {
        "host": target.host_header,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(claimed.secret, msg_id, timestamp, claimed.body),
    }
    # TLS is still checked against the host name, not the address we connect to.
    extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
    for address in addresses[:-1]:
        try:
            return await _post_to(client, target.at(address), claimed.body, headers, extensions)
        except httpx.ConnectError:
            continue  # e.g. an IPv6 address on a network without IPv6: the next one
    return await _post_to(client, target.at(addresses[-1]), claimed.body, headers, extensions)


async def _post_to(
    client: httpx.AsyncClient,
    url: httpx.URL,
    body: str,
    headers: dict[str, str],
    extensions: dict[str, Any],
) -> int:
    async with client.stream(
        "POST", url, content=body.encode(), headers=headers, extensions=extensions
    ) as response:
        return response.status_code  # the body is never read
