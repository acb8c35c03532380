"""Local scratch space and moving files between it and object storage."""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from store.blobs import BlobStore, StorageError
from store.settings import Settings
from worker.retry import STORAGE_ERRORS, retrying

log = logging.getLogger(__name__)


@contextmanager
def work_dir(settings: Settings, prefix: str) -> Iterator[Path]:
    """A fresh folder under ``<home>/work`` (the system temp folder if that is not
    writable), removed with everything in it at the end."""
    root = settings.resolved_home / "work"
    base: Path | None = root
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("cannot use %s for scratch files (%s); using the system temp folder", root, exc)
        base = None
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def download(store: BlobStore, uri: str, dest: Path, *, delays: Sequence[float]) -> None:
    """Copy an object to ``dest``, whole or not at all.

    Raises:
        StorageError: storage failed on every try (or the object is missing).
    """
    part = dest.with_name(f".{dest.name}.part")

    def once() -> None:
        try:
            store.download(uri, part)
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)

    try:
        retrying(once, errors=STORAGE_ERRORS, delays=delays, what=f"download of {uri}")
    except OSError as exc:
        raise StorageError(f"could not download {uri}: {exc}") from exc


def local_name(filename: str, default: str) -> str:
    """A safe local file name that keeps an upload's name and suffixes (``.tar.gz``):
    loaders pick the format by suffix, and their messages name the file the user sent."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(filename).name).lstrip(".")
    return name[-200:] or default


class UnsafeOutput(OSError):
    """A file the sandbox left that is not a plain file of its own (a link, a device...)."""


def is_plain_file(path: Path) -> bool:
    """A regular file with one name: not a symlink, hard link, device or pipe."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


@contextmanager
def open_output(path: Path) -> Iterator[IO[bytes]]:
    """Open a file the sandbox wrote, refusing anything but a plain file of its own.

    The sandbox is untrusted: a symlink or hard link in its folder could point the worker at
    a file of the worker's own (``O_NOFOLLOW``, and the link count, stop that), and a pipe
    could block it (``O_NONBLOCK``, then the type check).

    Raises:
        UnsafeOutput: not a plain file.
        OSError: it cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    f = os.fdopen(fd, "rb")
    with f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise UnsafeOutput(f"{path.name} is not a plain file; it is not uploaded")
        yield f
