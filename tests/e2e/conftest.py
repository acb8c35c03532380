from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, make_digits, real_stack

REDIS_URL = "redis://127.0.0.1:6379/12"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API + worker on Postgres, Redis and an S3 server, for a whole test module."""
    with real_stack(
        tmp_path_factory.mktemp("stack"), redis_url=REDIS_URL, db_prefix="kdserve_e2e"
    ) as stack:
        yield stack
