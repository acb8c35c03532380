"""Where entries live: the :class:`TeacherCache` interface, a local folder, and the one
function that reads, verifies, and builds on a miss (:func:`load_or_build`).

A store moves whole files by key and knows nothing of their content; the entry format and
its integrity check are :mod:`kdcore.cache.entry`'s. So another store (object storage, a
database-listed one with per-tenant caps) is one class implementing three methods, and
every store gets the same verification.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kdcore.cache.entry import CorruptEntry, TeacherOutputs, load_outputs
from kdcore.files import atomic_write

__all__ = ["CacheInfo", "LocalFolderCache", "TeacherCache", "load_or_build"]

_KEY = re.compile(r"[0-9a-f]{64}")


def check_key(key: str) -> str:
    """``key`` if it is a hex sha256 (so it is safe as a file or object name)."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"a cache key is 64 lowercase hex digits, got {key!r}")
    return key


class TeacherCache(ABC):
    """Entries by key: whole files, published atomically."""

    @abstractmethod
    def get(self, key: str) -> Path | None:
        """A local path to the entry's file, or None when there is none (not verified)."""

    @abstractmethod
    def put(self, key: str, build: Callable[[Path], None]) -> Path:
        """Publish the entry ``build`` writes to the path it is given; return :meth:`get`'s
        path for it.

        Two builders may race: each writes its own temporary file and the last to publish
        wins, so readers only ever see one whole entry.
        """

    @abstractmethod
    def discard(self, key: str) -> None:
        """Remove the entry (a corrupt one); no error when it is gone already."""


class LocalFolderCache(TeacherCache):
    """Entries as ``<root>/<key>.safetensors``, written through :func:`atomic_write`
    (temporary file in the same folder, fsync, rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{check_key(key)}.safetensors"

    def get(self, key: str) -> Path | None:
        path = self.path(key)
        return path if path.is_file() else None

    def put(self, key: str, build: Callable[[Path], None]) -> Path:
        path = self.path(key)
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            build(tmp)
        return path

    def discard(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


@dataclass(frozen=True)
class CacheInfo:
    """What the cache did for a run (``report.json``'s ``teacher_cache``).

    ``status``: ``hit`` (a verified entry was used), ``miss`` (built and published: its
    ``build_seconds``) or ``off`` (no cache, or nothing to cache). ``bytes``: the entry's size.
    """

    status: Literal["hit", "miss", "off"] = "off"
    key: str | None = None
    bytes: int = 0
    build_seconds: float = 0.0
    note: str | None = None  # why it is "off" when a cache was asked for


def load_or_build(
    store: TeacherCache,
    key: str,
    *,
    shape: tuple[int, ...],
    build: Callable[[], TeacherOutputs],
    save: Callable[[Path, TeacherOutputs], None],
    top_k: int | None = None,
) -> tuple[TeacherOutputs, CacheInfo]:
    """The verified entry ``key``: read from ``store``, or built, published and read back.

    A corrupt or truncated entry (:class:`CorruptEntry`) is discarded and rebuilt, never
    used. After a build the published file is read back and verified like any hit, so the
    run uses exactly what a resumed or later run will read.

    Args:
        store: where entries live.
        key: the entry's key (:func:`kdcore.cache.key.cache_key`).
        shape: the ``(N, K, ...)`` values the run needs.
        build: computes the outputs (runs the teacher).
        save: writes outputs to a file (:func:`kdcore.cache.entry.save_outputs`).
        top_k: the entry holds top-k logits (:func:`kdcore.cache.entry.load_outputs`).
    """
    check_key(key)
    path = store.get(key)
    if path is not None:
        try:
            outputs = load_outputs(path, key=key, shape=shape, top_k=top_k)
            return outputs, CacheInfo("hit", key, path.stat().st_size)
        except CorruptEntry:
            store.discard(key)
    started = time.perf_counter()
    built = build()
    path = store.put(key, lambda tmp: save(tmp, built))
    seconds = time.perf_counter() - started
    outputs = load_outputs(path, key=key, shape=shape, top_k=top_k)
    return outputs, CacheInfo("miss", key, path.stat().st_size, seconds)
