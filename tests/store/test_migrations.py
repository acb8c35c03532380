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
from sqlalchemy import MetaData, Table, create_engine, insert, inspect, text

from store.blobs import LocalStore
from store.db import make_engine, make_sessionmaker
from store.models import Base, Job
from tests.pg import fresh_database
from tests.worker.factories import create_dataset, create_teacher, create_tenant

ROOT = Path(__file__).resolve().parents[2]
ADDED_TO_JOBS = {"sweep_id", "choices", "request_hash", "warnings"}  # by 0004, 0006


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


def test_upgrading_a_database_with_jobs_keeps_every_row(url: str, tmp_path: Path) -> None:
    """0002 rebuilds the teachers and datasets tables on SQLite (batch mode), under rows that
    jobs point at: it must neither trip the foreign keys nor lose a row."""
    from cli.service import upgrade_database

    command.upgrade(_alembic(url), "0001")
    engine = make_engine(url)
    store = LocalStore(tmp_path / "storage")
    with make_sessionmaker(engine)() as s, s.begin():
        tenant = create_tenant(s)
        teacher = create_teacher(s, store, tenant.id)
        dataset = create_dataset(s, store, tenant.id)
        # A job as 0001 stored it: without the columns later revisions add to the model.
        jobs = Table(
            "jobs",
            MetaData(),
            *(c._copy() for c in Job.__table__.columns if c.name not in ADDED_TO_JOBS),
        )
        s.execute(
            insert(jobs).values(
                tenant_id=tenant.id,
                dataset_id=dataset.id,
                teacher_id=teacher.id,
                student={"family": "mlp", "hidden": [8]},
                config={"method": "scratch", "epochs": 2},
                method="scratch",
                metrics={},
            )
        )
    engine.dispose()

    assert upgrade_database(url, timeout=10, say=lambda _: None) == "0008"
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            for table in ("tenants", "teachers", "datasets", "jobs"):
                assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 1, table
            if conn.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
                assert "_alembic_tmp_teachers" not in inspect(conn).get_table_names()
    finally:
        engine.dispose()
