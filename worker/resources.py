"""What a worker process holds: settings, a database engine and the blob store.

Built on first use, once per process, from ``store.settings.settings``. Celery's prefork
parent never builds them (it only receives messages), so a forked child never inherits
open connections; :func:`reset` drops anything a parent did build.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from store.blobs import BlobStore, store_from_settings
from store.db import make_engine, make_sessionmaker
from store.settings import Settings


@dataclass(frozen=True)
class Resources:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: BlobStore


_lock = threading.Lock()
_current: Resources | None = None


def resources() -> Resources:
    global _current
    with _lock:
        if _current is None:
            from store.settings import settings

            engine = make_engine(settings.db_url, pool_size=2)  # a task, a heartbeat
            _current = Resources(
                settings=settings,
                engine=engine,
                sessions=make_sessionmaker(engine),
                store=store_from_settings(settings),
            )
        return _current


def reset() -> None:
    """Forget the resources (in a forked child: without closing the parent's connections)."""
    global _current
    with _lock:
        if _current is not None:
            _current.engine.dispose(close=False)
        _current = None
