"""Throw-away databases on the real PostgreSQL of this machine (127.0.0.1:5432, trust auth).

``KDSERVE_TEST_PG`` overrides the server URL (a superuser's, without a database name).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

SERVER = os.environ.get("KDSERVE_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def sqlalchemy_url(name: str) -> str:
    return SERVER.replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"


@contextmanager
def fresh_database(prefix: str = "kdserve_test") -> Iterator[str]:
    """Create an empty database, yield its SQLAlchemy URL, drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(SERVER + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield sqlalchemy_url(name)
    finally:
        with psycopg.connect(SERVER + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
