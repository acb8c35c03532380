"""Local scratch space and moving files between it and object storage."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import tempfile
import uuid
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


class SandboxOutput:
    """The sandbox's output folder, held by a descriptor opened before the child starts.

    The child is untrusted and owns its folder: it could replace ``out`` by a symlink to a
    folder of the worker's, or put links and devices in it. Through this descriptor the worker
    always reads the folder it created, opens entries by name relative to it (never through
    a path the child can redirect), and takes only regular files with one link
    (``O_NOFOLLOW``, then ``fstat``); ``O_NONBLOCK`` keeps a FIFO from blocking it.
    """

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> SandboxOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def plain_files(self) -> list[str]:
        """Names of the regular, singly linked files in the folder, sorted."""
        names = []
        for name in os.listdir(self.fd):
            try:
                st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                names.append(name)
        return sorted(names)

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        """Open one file of the folder for reading.

        Raises:
            UnsafeOutput: not a plain file of its own.
            OSError: it cannot be opened (missing, a symlink: ``ELOOP``).
        """
        if "/" in name or name in (".", ".."):
            raise UnsafeOutput(f"{name!r} is not a file name")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(name, flags, dir_fd=self.fd)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise UnsafeOutput(f"{name} is not a plain file; it is not uploaded")
            yield f

    def place(self, name: str, src: Path) -> None:
        """Copy the worker's file ``src`` into the folder as ``name``, atomically: written to
        a new temporary entry of the folder (``O_EXCL | O_NOFOLLOW``, so nothing the child
        put there is followed), then renamed over ``name`` (a link there is replaced, not
        followed)."""
        if "/" in name or name in (".", ".."):
            raise UnsafeOutput(f"{name!r} is not a file name")
        tmp = f".{name}.{uuid.uuid4().hex}.in"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o644, dir_fd=self.fd)
        try:
            with os.fdopen(fd, "wb") as out, src.open("rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise
