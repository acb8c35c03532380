"""The child's teacher cache: a :class:`kdcore.cache.TeacherCache` whose entries come from,
and go to, the worker (see :mod:`worker.sandbox.protocol`, :class:`CacheMessage`).

Imported by the child only (it imports torch through :mod:`kdcore.cache`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from kdcore.cache import TeacherCache
from kdcore.cache.store import check_key
from worker.sandbox.protocol import CACHE_DIR, CACHE_READY, CacheMessage, cache_file


class _Asks(Protocol):
    def ask(self, message: CacheMessage) -> bytes: ...


class WorkerCache(TeacherCache):
    """Entries as ``<box>/cache/<key>.safetensors``, placed there by the worker on ``get``
    and handed to it on ``put``; the worker stores them for every job of the tenant."""

    def __init__(self, box: Path, channel: _Asks) -> None:
        self.root = box / CACHE_DIR
        self.channel = channel

    def path(self, key: str) -> Path:
        return self.root / cache_file(check_key(key))

    def get(self, key: str) -> Path | None:
        path = self.path(key)
        path.unlink(missing_ok=True)  # only what the worker places now counts
        if self.channel.ask(CacheMessage(action="get", key=key)) != CACHE_READY:
            return None
        return path if path.is_file() else None

    def put(self, key: str, build: Callable[[Path], None]) -> Path:
        path = self.path(key)
        self.root.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        build(tmp)
        os.replace(tmp, path)
        self.channel.ask(CacheMessage(action="put", key=key))
        return path

    def discard(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
        self.channel.ask(CacheMessage(action="discard", key=key))
