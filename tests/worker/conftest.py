"""Worker tests: the task code called directly (no broker) against databases whose schema
Alembic built: a real Postgres (emptied between tests) and SQLite (a fresh copy per test),
with local storage under ``tmp_path``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from store.blobs import LocalStore
from store.db import make_engine, make_sessionmaker
from store.models import Base
from store.settings import Settings
from tests.pg import fresh_database
from tests.worker.factories import Db, Env

ROOT = Path(__file__).resolve().parents[2]


def _upgrade(url: str) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.cmd_opts = type("Opts", (), {"x": [f"url={url}"]})()  # as `alembic -x url=...`
    command.upgrade(cfg, "head")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny models train many times faster on one thread than on a busy machine's all.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def pg_engine() -> Iterator[tuple[str, Engine]]:
    with fresh_database("kdserve_worker") as url:
        _upgrade(url)
        engine = make_engine(url, pool_size=5)
        yield url, engine
        engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    _upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def pg_db(pg_engine: tuple[str, Engine]) -> Iterator[Db]:
    url, engine = pg_engine
    yield Db(url, engine, make_sessionmaker(engine))
    with engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in reversed(Base.metadata.sorted_tables))
        conn.execute(text(f"TRUNCATE {names} CASCADE"))


@pytest.fixture
def sqlite_db(sqlite_template: Path, tmp_path: Path) -> Iterator[Db]:
    path = tmp_path / "kdserve.db"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    yield Db(url, engine, make_sessionmaker(engine))
    engine.dispose()


@pytest.fixture(params=["postgres", "sqlite"])
def db(request: pytest.FixtureRequest) -> Db:
    """Each test using this runs on both databases."""
    name = "pg_db" if request.param == "postgres" else "sqlite_db"
    return request.getfixturevalue(name)


def _env(db: Db, tmp_path: Path) -> Env:
    store = LocalStore(tmp_path / "storage")
    settings = Settings(
        home=tmp_path / "home",
        database_url=db.url,
        storage_url=store.root.as_uri(),
        sandbox_threads=1,  # tiny models train fastest on one thread
    )
    return Env(settings=settings, sessions=db.sessions, store=store)


@pytest.fixture
def env(db: Db, tmp_path: Path) -> Env:
    """Settings, database and storage; on both databases."""
    return _env(db, tmp_path)


@pytest.fixture
def pg_env(pg_db: Db, tmp_path: Path) -> Env:
    """Settings, database and storage; on Postgres only (what production runs)."""
    return _env(pg_db, tmp_path)
