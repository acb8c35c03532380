"""API tests: the real app in-process over a real Postgres (schema built by Alembic) and a
real Redis broker; tables are emptied between tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from store.db import make_engine, make_sessionmaker
from store.models import Base
from store.settings import Settings
from tests.api.factories import Tenancy, make_tenant
from tests.pg import fresh_database

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with fresh_database("kdserve_api") as url:
        cfg = Config(str(ROOT / "alembic.ini"))
        cfg.cmd_opts = type("Opts", (), {"x": [f"url={url}"]})()
        command.upgrade(cfg, "head")
        yield url


@pytest.fixture(scope="session")
def engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(pg_url: str, tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path,
        database_url=pg_url,
        broker_url=REDIS_URL,
        storage_url=(tmp_path / "storage").as_uri(),
        queue=f"test-{uuid.uuid4().hex}",
    )


@pytest.fixture
def sessions(engine: Engine) -> Iterator[sessionmaker[Session]]:
    yield make_sessionmaker(engine)
    with engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in reversed(Base.metadata.sorted_tables))
        conn.execute(text(f"TRUNCATE {names} CASCADE"))
    redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture
def client(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def alice(sessions: sessionmaker[Session]) -> Tenancy:
    return make_tenant(sessions, "alice")


@pytest.fixture
def bob(sessions: sessionmaker[Session]) -> Tenancy:
    return make_tenant(sessions, "bob")
