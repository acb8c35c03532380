"""Fixtures for breaking the service's parts: each module gets its own private Redis, an S3
server whose writes can be held or failed, a database (the machine's Postgres unless the
module overrides ``database_url``), and the real `kdserve api` + `kdserve worker`."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import KDServeClient
from tests.e2e.stack import DIGITS, KDSERVE, Stack, make_digits, service_env, upload_digits
from tests.faults.servers import MotoS3, RedisServer, S3Faults
from tests.pg import fresh_database
from tests.s3 import free_port


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def teacher_weights(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits teacher trained by the engine's command line (2 epochs; safetensors only)."""
    out = tmp_path_factory.mktemp("teacher")
    config = out / "scratch.json"
    config.write_text('{"method": "scratch", "epochs": 2, "batch_size": 64, "seed": 0}')
    subprocess.run(
        [
            KDSERVE, "train", "--arch", str(DIGITS / "teacher.json"),
            "--data", str(digits / "digits-train.npz"), "--config", str(config),
            "--out", str(out / "run"), "--formats", "safetensors",
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )  # fmt: skip
    return out / "run" / "student.safetensors"


@pytest.fixture(scope="module")
def s3_faults() -> Iterator[S3Faults]:
    faults = S3Faults()
    with pytest.MonkeyPatch.context() as mp:
        faults.install(mp)
        yield faults


@pytest.fixture(scope="module")
def s3_server(s3_faults: S3Faults) -> Iterator[MotoS3]:
    """moto's S3 server with one bucket (tests may stop and start it again)."""
    server = MotoS3()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with fresh_database("kdserve_faults") as url:
        yield url


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, str]:
    """Extra KDSERVE_* settings for the module's stack (a module may override this)."""
    return {}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    redis_server: RedisServer,
    s3_server: MotoS3,
    stack_settings: dict[str, str],
) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("stack")
    env = service_env(
        home,
        database_url=database_url,
        broker_url=redis_server.url,
        port=free_port(),
        extra={**s3_server.env, **stack_settings},
    )
    with Stack(home=home, env=env, port=int(env["KDSERVE_API_PORT"])).serving() as stack:
        yield stack


@pytest.fixture(scope="module")
def alice(stack: Stack) -> KDServeClient:
    return stack.new_tenant("alice")


@pytest.fixture(scope="module")
def data(alice: KDServeClient, digits: Path) -> dict[str, str]:
    return upload_digits(alice, digits)
