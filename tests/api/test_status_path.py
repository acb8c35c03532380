"""The status path (`GET /v1/jobs/{id}`) made fast keeps its guarantees: the key cache's
revocation bound, tenant checks with a cached key, no deadlock with more requests than
pooled connections, reads that survive connections the database dropped, and the same
path on SQLite (embedded mode)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.kit.keycache import KeyCache
from store.db import make_engine, make_sessionmaker
from store.models import Tenant
from store.repositories.tenants import TenantRepository
from store.settings import Settings
from tests.api.conftest import ROOT
from tests.api.factories import Tenancy, create_job, make_tenant


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_key_cache_forgets_a_key_after_its_ttl() -> None:
    clock = Clock()
    cache = KeyCache(2.0, clock=clock)
    tenant = Tenant(name="t")
    cache.put("h", tenant)
    clock.now += 1.9
    assert cache.get("h") is tenant
    clock.now += 0.1
    assert cache.get("h") is None
    assert cache.get("other") is None
    off = KeyCache(0.0, clock=clock)
    off.put("h", tenant)
    assert off.get("h") is None


def test_a_revoked_key_is_refused_within_the_cache_bound(
    settings: Settings, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s, s.begin():
        job = create_job(s, alice.id).id
    short = settings.model_copy(update={"key_cache_ttl_s": 0.5})
    with TestClient(create_app(short)) as client:
        assert client.get(f"/v1/jobs/{job}", headers=alice.headers).status_code == 200
        with sessions() as s, s.begin():
            assert TenantRepository(s).revoke_key(alice.key)
        revoked = time.monotonic()
        while client.get(f"/v1/jobs/{job}", headers=alice.headers).status_code == 200:
            time.sleep(0.02)
        assert time.monotonic() - revoked < 0.5 + 1.5  # the bound, plus a slow request
        assert client.get(f"/v1/jobs/{job}", headers=alice.headers).status_code == 401


def test_a_cached_key_still_sees_only_its_tenants_jobs(
    client: TestClient, alice: Tenancy, bob: Tenancy, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s, s.begin():
        mine, theirs = create_job(s, alice.id).id, create_job(s, bob.id).id
    for _ in range(3):  # the first request fills the cache, the others use it
        assert client.get(f"/v1/jobs/{mine}", headers=alice.headers).status_code == 200
        r = client.get(f"/v1/jobs/{theirs}", headers=alice.headers)
        assert r.status_code == 404
        assert r.json()["code"] == "not_found"
    assert client.get(f"/v1/jobs/{theirs}", headers=bob.headers).status_code == 200


def test_more_status_requests_than_connections_do_not_deadlock(
    settings: Settings, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s, s.begin():
        job = create_job(s, alice.id).id
    tiny = settings.model_copy(update={"database_pool_size": 1, "key_cache_ttl_s": 0.0})
    with TestClient(create_app(tiny)) as client, ThreadPoolExecutor(24) as pool:
        paths = [f"/v1/jobs/{job}", "/v1/jobs"] * 24  # reads and sessions, one connection
        t0 = time.monotonic()
        codes = list(pool.map(lambda p: client.get(p, headers=alice.headers).status_code, paths))
        assert codes == [200] * len(paths)
        assert time.monotonic() - t0 < 20  # far below the 30 s a deadlock would wait


def test_a_read_survives_connections_the_database_dropped(
    client: TestClient, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s, s.begin():
        job = create_job(s, alice.id).id
    assert client.get(f"/v1/jobs/{job}", headers=alice.headers).status_code == 200
    with sessions() as s, s.begin():  # as a database restart does to the API's pool
        s.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    r = client.get(f"/v1/jobs/{job}", headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.headers["etag"]


def test_the_status_path_reads_sqlite_too(tmp_path: Path) -> None:
    """Embedded mode: the read engine is aiosqlite on the same file."""
    url = f"sqlite:///{tmp_path / 'kdserve.db'}"
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.cmd_opts = type("Opts", (), {"x": [f"url={url}"]})()
    command.upgrade(cfg, "head")
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    alice, bob = make_tenant(sessions, "alice"), make_tenant(sessions, "bob")
    with sessions() as s, s.begin():
        job = create_job(s, alice.id).id
    engine.dispose()
    settings = Settings(
        home=tmp_path, database_url=url, storage_url=(tmp_path / "storage").as_uri()
    )
    with TestClient(create_app(settings)) as client:
        r = client.get(f"/v1/jobs/{job}", headers=alice.headers)
        assert r.status_code == 200
        assert r.json()["status"] == "queued"
        again = {**alice.headers, "If-None-Match": r.headers["etag"]}
        assert client.get(f"/v1/jobs/{job}", headers=again).status_code == 304
        assert client.get(f"/v1/jobs/{job}", headers=bob.headers).status_code == 404
