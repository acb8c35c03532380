from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, flush_redis, make_digits, service_env
from tests.pg import fresh_database
from tests.s3 import free_port, moto_s3

REDIS_URL = "redis://127.0.0.1:6379/12"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API + worker on Postgres, Redis and an S3 server, for a whole test module."""
    home = tmp_path_factory.mktemp("stack")
    with fresh_database("kdserve_e2e") as db_url, moto_s3() as s3:
        env = service_env(
            home, database_url=db_url, broker_url=REDIS_URL, port=free_port(), extra=s3
        )
        try:
            with Stack(home=home, env=env, port=int(env["KDSERVE_API_PORT"])).serving() as stack:
                yield stack
        finally:
            flush_redis(REDIS_URL)
