"""Writing files so that a final name never holds a half-written file."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success, move it to ``path`` in one step.

    Write the file at the yielded path. When the block ends without an exception, the file is
    flushed to disk and renamed to ``path`` (replacing any file there), so readers see the
    old file or the whole new one, never part of it. On an exception the temporary file is
    removed and ``path`` is left as it was.

    The temporary name is hidden (``.name.<random>.tmp<suffix>``), unique, so concurrent
    writers do not collide, and in the same folder, so the rename stays on one file system; it
    keeps ``path``'s suffix because some writers (``torch.export.save``) check it.

    Example::

        with atomic_write(out / "report.json") as tmp:
            tmp.write_text(text)
    """
    final = Path(path)
    tmp = final.with_name(f".{final.stem}.{secrets.token_hex(4)}.tmp{final.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the name is
        finally:
            os.close(fd)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
