from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from store import keys
from store.repositories.tenants import TenantRepository
from store.settings import Settings
from tests.api.factories import Tenancy, create_dataset, create_job, create_teacher

PROBLEM = "application/problem+json"


@pytest.mark.parametrize(
    "header", [None, "Bearer nope", "Bearer kds_000000000000_xyz", "Basic abc"]
)
def test_missing_or_bad_key_is_401_problem(client: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    r = client.get("/v1/jobs", headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == PROBLEM
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["code"] == "unauthorized"
    assert "kdserve keys create" in r.json()["detail"]


def test_revoked_key_is_refused(
    client: TestClient, alice: Tenancy, sessions: sessionmaker[Session], settings: Settings
) -> None:
    assert client.get("/v1/jobs", headers=alice.headers).status_code == 200  # now cached
    with sessions() as s, s.begin():
        assert TenantRepository(s).revoke_key(alice.key)
    revoked = time.monotonic()
    # Refused within the key cache's bound (api.kit.keycache), and from then on.
    while client.get("/v1/jobs", headers=alice.headers).status_code != 401:
        assert time.monotonic() - revoked < settings.key_cache_ttl_s + 1
        time.sleep(0.05)
    assert client.get(f"/v1/jobs/{uuid.uuid4()}", headers=alice.headers).status_code == 401


def test_keys_are_stored_as_hashes_only(alice: Tenancy, sessions: sessionmaker[Session]) -> None:
    secret = alice.key.split("_", 2)[2]
    with sessions() as s:
        rows = s.execute(text("SELECT * FROM api_keys WHERE tenant_id = :t"), {"t": alice.id})
        stored = [str(v) for row in rows for v in row]
    assert stored
    assert not any(secret in v or alice.key in v for v in stored)
    assert hashlib.sha256(alice.key.encode()).hexdigest() in stored


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    compare = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    new = keys.generate_key()
    assert keys.matches(new.key, new.key_hash)
    assert not keys.matches(new.key + "x", new.key_hash)
    assert len(calls) == 2  # every comparison, right or wrong, goes through compare_digest


def test_another_tenants_resources_are_404_everywhere(
    client: TestClient, alice: Tenancy, bob: Tenancy, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s, s.begin():
        t = create_teacher(s, alice.id)
        d = create_dataset(s, alice.id)
        j = create_job(s, alice.id, dataset_id=d.id)
        ids = {"teacher": t.id, "dataset": d.id, "job": j.id}
    paths = [
        ("get", f"/v1/teachers/{ids['teacher']}"),
        ("delete", f"/v1/teachers/{ids['teacher']}"),
        ("get", f"/v1/datasets/{ids['dataset']}"),
        ("delete", f"/v1/datasets/{ids['dataset']}"),
        ("get", f"/v1/jobs/{ids['job']}"),
        ("post", f"/v1/jobs/{ids['job']}/cancel"),
        ("get", f"/v1/jobs/{ids['job']}/metrics"),
        ("get", f"/v1/jobs/{ids['job']}/artifacts"),
        ("get", f"/v1/jobs/{ids['job']}/artifacts/report.json"),
        ("get", f"/v1/jobs/{ids['job']}/report"),
    ]
    for method, path in paths:
        r = client.request(method, path, headers=bob.headers)
        assert r.status_code == 404, (method, path, r.text)
        assert r.headers["content-type"] == PROBLEM
        if method == "get" and not path.endswith(("report.json", "/report")):
            assert client.get(path, headers=alice.headers).status_code == 200, path
    for listing in ("/v1/teachers", "/v1/datasets", "/v1/jobs"):
        assert client.get(listing, headers=bob.headers).json()["items"] == []
        assert len(client.get(listing, headers=alice.headers).json()["items"]) >= 1
    # a teacher of alice's cannot be used in bob's job either
    r = client.post(
        "/v1/jobs",
        headers=bob.headers,
        json={
            "teacher_id": str(ids["teacher"]),
            "dataset_id": str(ids["dataset"]),
            "student": {"family": "mlp", "hidden": [4]},
            "config": {"method": "kd"},
        },
    )
    assert r.status_code == 422
    assert "no dataset" in r.json()["detail"]


def test_api_never_imports_torch() -> None:
    code = "import sys, api.app; api.app.create_app(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
