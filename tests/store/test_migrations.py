"""`alembic upgrade head` on an empty database gives exactly the models' schema, on Postgres
and SQLite, and `downgrade base` removes it again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from store.models import Base
from tests.pg import fresh_database

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["postgres", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    with fresh_database("kdserve_migrations") as pg_url:
        yield pg_url


def _alembic(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.cmd_opts = type("Opts", (), {"x": [f"url={url}"]})()  # like `alembic -x url=...`
    return cfg


def test_upgrade_head_matches_models_and_downgrade_removes_all(url: str) -> None:
    command.upgrade(_alembic(url), "head")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        assert diff == [], f"models and migrations differ: {diff}"
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        command.downgrade(_alembic(url), "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
