"""Engines and sessions. Postgres in production, SQLite in embedded mode and some tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, *, pool_size: int = 10, pre_ping: bool = True) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
    )


def make_read_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An asyncio engine for the API's reads (psycopg's async mode; aiosqlite on SQLite), so
    a read waits on the event loop instead of a thread. Autocommit: a read is one statement,
    without the BEGIN and COMMIT (two round trips) of a transaction. No pre-ping (a round
    trip per checkout): the caller retries a read that met a dropped connection."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(
            parsed.set(drivername="sqlite+aiosqlite"),
            isolation_level="AUTOCOMMIT",
            connect_args={"timeout": 30},
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        parsed.set(drivername="postgresql+psycopg"),
        isolation_level="AUTOCOMMIT",
        pool_size=pool_size,
        max_overflow=0,  # the API's session slots already bound its connections
        pool_recycle=1800,
    )


def _sqlite_pragmas(conn: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; foreign keys are off by default.
    cur = conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def make_async_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits at the end of the block, or rolls back on error."""
    with factory() as session, session.begin():
        yield session
