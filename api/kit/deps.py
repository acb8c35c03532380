"""Request-scoped dependencies: the database session (which owns the transaction), the
calling tenant, and the clients the lifespan built."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from api.kit.errors import Unauthorized
from api.kit.keycache import KeyCache
from api.kit.streams import StreamSlots
from store import keys
from store.blobs import BlobStore
from store.models import ApiKey, Tenant
from store.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

DB_SLOT_TIMEOUT_S = 30.0  # SQLAlchemy's pool_timeout default


@dataclass
class Services:
    """What ``create_app``'s lifespan builds; kept on ``app.state.services``."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    # Reads on the event loop, in autocommit mode (`read_only`).
    readers: async_sessionmaker[AsyncSession]
    store: BlobStore
    celery: Celery
    keys: KeyCache
    # How many requests may hold a database session at once (`db_slot`).
    db_slots: anyio.Semaphore = field(default_factory=lambda: anyio.Semaphore(10))
    # Event streams open in this process (`GET /v1/jobs/{id}/events`, api.kit.streams).
    streams: StreamSlots = field(default_factory=StreamSlots)


# The dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in
# the thread pool, and a thread hand-off costs more than what they do.
async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def defer_task(
    session: Session,
    name: str,
    args: list[Any],
    *,
    queue: str | None = None,
    priority: int = 0,
) -> None:
    """Queue a Celery task to be sent only after this session's transaction commits;
    ``priority``: :func:`store.queue.fair_priority` (0 goes first)."""
    session.info.setdefault("outbox", []).append((name, args, queue, priority))


@asynccontextmanager
async def db_slot_held(services: Services) -> AsyncIterator[None]:
    """Wait, on the event loop, for one of ``KDSERVE_DATABASE_POOL_SIZE`` session slots.

    A request's session keeps its pooled connection between the thread-pool calls that make
    up the request (auth, endpoint, commit). Without a bound, more concurrent requests than
    connections deadlock: every thread waits for a connection held by a request that needs a
    thread to finish, until the pool times out (30 s). With at most as many sessions as the
    pool holds, a session always gets its connection and the rest of the requests queue here.
    A request that waits longer than the pool's own timeout gets a 503 with Retry-After, as
    a pool timeout would give it. No request holds a slot while it waits on its client:
    bodies are read before the session opens (JSON) or without one (uploads,
    :func:`in_transaction`).
    """
    try:
        services.db_slots.acquire_nowait()  # the usual case: no timer to set up
    except anyio.WouldBlock:
        try:
            with anyio.fail_after(DB_SLOT_TIMEOUT_S):
                await services.db_slots.acquire()
        except TimeoutError as exc:
            raise PoolTimeout("no database session free; retry shortly") from exc
    try:
        yield
    finally:
        services.db_slots.release()


async def db_slot(services: ServicesDep) -> AsyncIterator[None]:
    async with db_slot_held(services):
        yield


def get_session(
    services: ServicesDep, _slot: Annotated[None, Depends(db_slot, scope="function")]
) -> Iterator[Session]:
    """One transaction per request: commit when the endpoint returns, then send the tasks it
    deferred (so a worker never sees a row that is not committed); roll back on error."""
    session = services.sessions()
    try:
        yield session
        session.commit()
    except Exception:
        session.rollback()
        raise
    finally:
        outbox = session.info.pop("outbox", [])
        session.close()
    _send(services, outbox)


async def in_transaction(services: Services, work: Callable[[Session], T]) -> T:
    """``work`` in one short transaction of its own, holding a session slot only meanwhile
    (for requests that must not hold one throughout, like uploads); the tasks it deferred
    are sent after the commit."""
    async with db_slot_held(services):
        return await run_in_threadpool(_transaction, services, work)


async def read_only(services: Services, work: Callable[[Session], T]) -> T:
    """``work``, which only reads, on the asyncio engine in autocommit mode: no thread-pool
    hop and no BEGIN/COMMIT round trips. ``work`` is the same synchronous repository code
    the other routes run: SQLAlchemy runs it in a greenlet whose I/O waits on the event
    loop (``AsyncSession.run_sync``). A read that meets a connection the database dropped
    (a restart) is tried once more on a fresh one, since reading twice is harmless."""
    async with db_slot_held(services):
        for attempt in (1, 2):
            try:
                async with services.readers() as session:
                    return await session.run_sync(work)
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
    raise AssertionError("unreachable")


def _transaction(services: Services, work: Callable[[Session], T]) -> T:
    with services.sessions() as session:
        with session.begin():
            result = work(session)
        outbox = session.info.pop("outbox", [])
    _send(services, outbox)
    return result


def _send(services: Services, outbox: list[tuple[str, list[Any], str | None, int]]) -> None:
    for name, args, queue, priority in outbox:
        try:
            services.celery.send_task(name, args=args, queue=queue, priority=priority)
        except Exception:  # the reaper re-sends jobs left queued; never fail a committed write
            log.exception("could not send %s%s; the reaper will retry", name, args)


# scope="function": commit before the response is sent, so a client that reads back what it
# just created always finds it.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer kds_...`")

DENIED = (
    "missing or invalid API key: send `Authorization: Bearer <key>` with a key from "
    "`kdserve keys create`"
)


def unauthorized() -> Unauthorized:
    return Unauthorized(DENIED, headers={"WWW-Authenticate": "Bearer"})


async def authenticate(services: Services, authorization: str | None) -> Tenant | None:
    """The tenant whose key the ``Authorization`` header carries, else None: from the keys
    this process accepted in the last ``KDSERVE_KEY_CACHE_TTL_S`` (:mod:`api.kit.keycache`),
    else from the database."""
    scheme, key = get_authorization_scheme_param(authorization)
    if scheme.lower() != "bearer" or not key:
        return None
    digest = keys.hash_key(key)
    tenant = services.keys.get(digest)
    if tenant is None:
        tenant = await read_only(services, partial(tenant_of_key, key=key))
        if tenant is not None:
            services.keys.put(digest, tenant)
    return tenant


def tenant_of_key(session: Session, key: str) -> Tenant | None:
    """The tenant whose unrevoked key ``key`` is, else None."""
    prefix = keys.split_prefix(key)
    if prefix is None:
        return None
    row = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
    ).first()
    # Compare even when no row matched, so timing does not tell whether the prefix exists.
    stored = row[0].key_hash if row else keys.hash_key("kds_000000000000_x")
    if not keys.matches(key, stored) or row is None:
        return None
    tenant: Tenant = row[1]
    return tenant


async def get_tenant(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    """The caller's tenant, as :class:`api.kit.gate.Gate` found it before the body was read
    (the bearer dependency only documents the scheme in the OpenAPI schema)."""
    tenant: Tenant | None = getattr(request.state, "tenant", None)
    if tenant is None:
        raise unauthorized()
    return tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]


def parse_id(value: str, what: str) -> uuid.UUID:
    """A path id; a malformed one is simply not found (no hint about other tenants' ids)."""
    from api.kit.errors import NotFound

    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"no {what} {value!r}") from None
