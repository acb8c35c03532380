"""The folder prometheus-client's multiprocess mode keeps its values in, for ``kdserve api``.

prometheus-client decides on import whether it writes values to files (multiprocess mode, when
``PROMETHEUS_MULTIPROC_DIR`` is set) or keeps them in memory, so the variable must be set
before any API process imports it: ``kdserve api`` sets it before uvicorn starts, and its
worker processes inherit it. The library's documentation asks for the folder to be emptied
between runs (values of an earlier run's processes would be summed in): each start gets a
new one. This module imports nothing from prometheus-client, on purpose.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextmanager
def multiprocess_dir() -> Iterator[Path]:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an empty folder for the processes started inside
    the block.

    An operator's own value is kept (a tmpfs, say) and its ``*.db`` files, the library's
    values of an earlier run, are removed; otherwise a new temporary folder is made, and
    removed after the block.
    """
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="kdserve-metrics-"))
    os.environ[ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(path, ignore_errors=True)
