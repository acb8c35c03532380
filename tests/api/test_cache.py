"""``GET /v1/cache`` and ``DELETE /v1/cache/{id}``: a tenant's teacher-cache entries, over HTTP,
scoped to the tenant. The entries are recorded as a worker records them
(:class:`store.repositories.cache.CacheRepository`), with their objects in storage."""

from __future__ import annotations

import uuid
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from store.blobs import store_from_settings
from store.models import utcnow
from store.repositories.cache import CacheRepository
from store.settings import Settings
from tests.api.factories import Tenancy


def _entry(
    sessions: sessionmaker[Session], settings: Settings, tenant: Tenancy, *, minutes_ago: int = 0
) -> tuple[str, str]:
    """Record an entry with its object in storage; its key and URI."""
    store = store_from_settings(settings)
    key = uuid.uuid4().hex * 2
    writer = store.writer(f"tenants/{tenant.id}/cache/{key}.safetensors")
    writer.write(b"entry bytes")
    obj = writer.commit()
    with sessions() as s, s.begin():
        when = utcnow() - timedelta(minutes=minutes_ago)
        CacheRepository(s, tenant.id).record(
            key=key, uri=obj.uri, size=obj.size, sha256=obj.sha256, now=when
        )
    return key, obj.uri


def test_a_tenant_lists_its_entries_newest_first_in_pages(
    client: TestClient,
    sessions: sessionmaker[Session],
    settings: Settings,
    alice: Tenancy,
    bob: Tenancy,
) -> None:
    keys = [_entry(sessions, settings, alice, minutes_ago=m)[0] for m in (30, 20, 10)]
    _entry(sessions, settings, bob)
    first = client.get("/v1/cache?limit=2", headers=alice.headers)
    assert first.status_code == 200
    body = first.json()
    assert [e["key"] for e in body["items"]] == keys[::-1][:2]
    item = body["items"][0]
    assert set(item) == {"id", "key", "size", "hits", "last_used_at", "created_at"}
    assert (item["size"], item["hits"]) == (len(b"entry bytes"), 0)
    rest = client.get(f"/v1/cache?limit=2&cursor={body['next_cursor']}", headers=alice.headers)
    assert [e["key"] for e in rest.json()["items"]] == [keys[0]]
    assert rest.json()["next_cursor"] is None
    bobs = client.get("/v1/cache", headers=bob.headers).json()["items"]
    assert len(bobs) == 1
    assert bobs[0]["key"] not in keys


def test_deleting_an_entry_removes_its_object_and_row_and_another_tenant_gets_404(
    client: TestClient,
    sessions: sessionmaker[Session],
    settings: Settings,
    alice: Tenancy,
    bob: Tenancy,
) -> None:
    key, uri = _entry(sessions, settings, alice)
    store = store_from_settings(settings)
    [item] = client.get("/v1/cache", headers=alice.headers).json()["items"]
    assert client.delete(f"/v1/cache/{item['id']}", headers=bob.headers).status_code == 404
    assert store.exists(uri)
    assert client.delete("/v1/cache/not-an-id", headers=alice.headers).status_code == 404
    assert client.delete(f"/v1/cache/{item['id']}", headers=alice.headers).status_code == 204
    assert not store.exists(uri)
    assert client.get("/v1/cache", headers=alice.headers).json()["items"] == []
    assert client.delete(f"/v1/cache/{item['id']}", headers=alice.headers).status_code == 404
    with sessions() as s:
        assert CacheRepository(s, alice.id).by_key(key) is None


def test_the_cache_needs_a_key(client: TestClient) -> None:
    assert client.get("/v1/cache").status_code == 401
    assert client.delete(f"/v1/cache/{uuid.uuid4()}").status_code == 401
