"""Retrying calls to the database and object storage.

A Postgres restart or a storage hiccup must not kill a job that has trained for hours: the
worker retries with backoff, and only gives up (and reports the failure) after the delays
of a :class:`Retries` policy are used up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from store.blobs import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Connection refused or dropped, server restarting, SQLite busy, pool exhausted: all pass.
DB_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeout)
STORAGE_ERRORS: tuple[type[Exception], ...] = (StorageError, OSError)


@dataclass(frozen=True)
class Retries:
    """Seconds to wait before each retry; one more try than delays."""

    db: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)  # about 30 s
    # The final state is worth waiting for: without it the job is re-run by the reaper.
    final_db: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
    storage: tuple[float, ...] = (1.0, 3.0, 10.0)


NO_WAIT = Retries(db=(0.0, 0.0), final_db=(0.0, 0.0), storage=(0.0, 0.0))


def retrying(
    fn: Callable[[], T],
    *,
    errors: tuple[type[Exception], ...],
    delays: Sequence[float],
    what: str,
    stop: threading.Event | None = None,
) -> T:
    """Call ``fn``; on ``errors`` wait and call again, re-raising the last error.

    ``stop`` ends the waiting early (re-raising), so a thread being shut down does not
    sit in a backoff.
    """
    for delay in delays:
        try:
            return fn()
        except errors as exc:
            log.warning(
                "%s failed (%s: %s); retrying in %.1f s",
                what,
                type(exc).__name__,
                _first_line(exc),
                delay,
            )
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                raise
    return fn()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
