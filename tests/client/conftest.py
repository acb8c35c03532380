from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from api.app import create_app
from cli.service import upgrade_database
from client import KDServeClient
from store.blobs import store_from_settings
from store.db import make_engine, make_sessionmaker
from store.settings import Settings
from tests.client.factories import Server, create_key


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real API in-process on a SQLite home that `kdserve db upgrade`'s code migrated.
    One per session (the schema takes a moment); tests stay apart by using their own tenant."""
    home = tmp_path_factory.mktemp("kdserve-home")
    # Explicit URLs: a KDSERVE_DATABASE_URL in the environment must not redirect the tests.
    settings = Settings(home=home, database_url=None, broker_url=None, storage_url=None)
    upgrade_database(settings.db_url, timeout=5)
    engine = make_engine(settings.db_url)
    with TestClient(create_app(settings)) as http:
        yield Server(settings, http, make_sessionmaker(engine), store_from_settings(settings))
    engine.dispose()


@pytest.fixture
def api_key(server: Server) -> str:
    return create_key(server)


@pytest.fixture
def kd(server: Server, api_key: str) -> KDServeClient:
    client = KDServeClient(api_key=api_key, http=server.http)
    client._sleep = lambda _s: None  # retries in these tests need no real waiting
    return client
