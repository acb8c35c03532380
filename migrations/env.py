"""Alembic environment: the URL comes from kdserve's settings, the target from its models."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Connection

from store.db import make_engine
from store.models import Base
from store.settings import Settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    # `alembic -x url=...` wins (tests), then KDSERVE_DATABASE_URL / the embedded default.
    return context.get_x_argument(as_dictionary=True).get("url") or Settings().db_url


def _configure(**kw: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=True,  # SQLite can only ALTER through table copies
        **kw,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _migrate(conn: Connection) -> None:
    """Run the migrations on ``conn``. On SQLite, with foreign keys off while they run:
    batch mode rebuilds a table by copy, drop and rename, and dropping a table that other
    rows point at fails while they are on (Alembic's batch-mode documentation says as much).
    They are checked once the migrations are done."""
    sqlite = conn.dialect.name == "sqlite"
    outer = conn.in_transaction()  # kdserve's upgrade code commits its own

    def pragma(sql: str) -> list[Any]:
        result = conn.exec_driver_sql(sql)
        rows = list(result.fetchall()) if result.returns_rows else []
        if not outer:  # end SQLAlchemy's autobegun transaction, or Alembic would join it
            conn.commit()
        return rows

    if sqlite:  # SQLite ignores this inside a transaction; pysqlite opens none for it
        pragma("PRAGMA foreign_keys=OFF")
    _configure(connection=conn)
    try:
        with context.begin_transaction():
            context.run_migrations()
        if sqlite and (broken := pragma("PRAGMA foreign_key_check")):
            raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
    finally:
        if sqlite:
            pragma("PRAGMA foreign_keys=ON")


def run_migrations_online() -> None:
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:  # handed in by kdserve's own upgrade code
        _migrate(connection)
        return
    engine = make_engine(_url())
    with engine.connect() as conn:
        _migrate(conn)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
