"""Webhook endpoints over the API (in-process app, real Postgres): registering (the secret
shown once, the address rule), listing, deleting, the per-tenant limit, tenant isolation,
and the deliveries each endpoint records."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from ipaddress import ip_network

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from store.models import JobEvent, JobStatus, WebhookEndpoint
from store.settings import Settings
from tests.api.factories import Tenancy, create_job
from tests.webhook_receiver import Receiver
from worker.webhooks import dispatch

PROBLEM = "application/problem+json"
HOOK = "http://127.0.0.1:9/hooks"  # loopback: allowed in these tests, as the e2e stack does


@pytest.fixture
def loopback_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "webhook_allowed_networks": [ip_network("127.0.0.0/8"), ip_network("::1/128")],
            "max_webhooks_per_tenant": 3,
        }
    )


@pytest.fixture
def api(loopback_settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    with TestClient(create_app(loopback_settings)) as c:
        yield c


def _count(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(WebhookEndpoint)) or 0


def test_registering_returns_the_secret_once(api: TestClient, alice: Tenancy) -> None:
    r = api.post("/v1/webhooks", json={"url": HOOK, "description": "ci"}, headers=alice.headers)
    assert r.status_code == 201, r.text
    created = r.json()
    assert r.headers["location"] == f"/v1/webhooks/{created['id']}"
    assert created["url"] == HOOK
    assert created["description"] == "ci"
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) == 32

    listed = api.get("/v1/webhooks", headers=alice.headers).json()
    assert [w["id"] for w in listed["items"]] == [created["id"]]
    assert "secret" not in listed["items"][0]
    one = api.get(f"/v1/webhooks/{created['id']}", headers=alice.headers).json()
    assert one == {k: v for k, v in created.items() if k != "secret"}
    again = api.post("/v1/webhooks", json={"url": HOOK}, headers=alice.headers).json()
    assert again["secret"] != created["secret"]


@pytest.mark.parametrize(
    ("url", "address", "kind"),
    [
        ("http://10.0.0.1/hooks", "10.0.0.1", "a private address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254", "a link-local address"),
        ("http://[::1]:8080/", "::1", "a loopback address"),
        ("http://localhost/", "127.0.0.1", "a loopback address"),
        ("https://[::ffff:10.1.2.3]/", "", "a private address (10.1.2.3 inside it)"),
    ],
)
def test_a_non_public_address_is_422_naming_it_and_the_setting(
    client: TestClient,
    alice: Tenancy,
    sessions: sessionmaker[Session],
    url: str,
    address: str,
    kind: str,
) -> None:
    """Default settings: no network allowed."""
    r = client.post("/v1/webhooks", json={"url": url}, headers=alice.headers)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert f"resolves to {address}" in body["detail"]
    assert kind in body["detail"]
    assert "KDSERVE_WEBHOOK_ALLOWED_NETWORKS" in body["detail"]
    assert body["errors"][0]["loc"] == ["url"]
    assert _count(sessions) == 0


def test_allowing_loopback_does_not_allow_private_networks(
    api: TestClient, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    assert api.post("/v1/webhooks", json={"url": HOOK}, headers=alice.headers).status_code == 201
    for url in ("http://10.0.0.1/", "http://169.254.169.254/", "http://192.168.0.10/"):
        r = api.post("/v1/webhooks", json={"url": url}, headers=alice.headers)
        assert r.status_code == 422, url
    assert _count(sessions) == 1


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://127.0.0.1/x", "scheme"),
        ("http://user:secret@127.0.0.1/", "user name or password"),
        ("not a url", "scheme"),
        ("http://does-not-exist.invalid/", "does not resolve"),
    ],
)
def test_bad_urls_are_422_saying_what_to_change(
    api: TestClient, alice: Tenancy, url: str, says: str
) -> None:
    r = api.post("/v1/webhooks", json={"url": url}, headers=alice.headers)
    assert r.status_code == 422
    assert says in r.json()["detail"]


def test_unknown_fields_are_422(api: TestClient, alice: Tenancy) -> None:
    r = api.post("/v1/webhooks", json={"url": HOOK, "secret": "mine"}, headers=alice.headers)
    assert r.status_code == 422


def test_a_tenant_has_a_limit_of_endpoints(
    api: TestClient, alice: Tenancy, bob: Tenancy, sessions: sessionmaker[Session]
) -> None:
    for _ in range(3):
        assert (
            api.post("/v1/webhooks", json={"url": HOOK}, headers=alice.headers).status_code == 201
        )
    r = api.post("/v1/webhooks", json={"url": HOOK}, headers=alice.headers)
    assert r.status_code == 409
    assert "KDSERVE_MAX_WEBHOOKS_PER_TENANT" in r.json()["detail"]
    assert "delete one" in r.json()["detail"]
    # Per tenant: bob still may.
    assert api.post("/v1/webhooks", json={"url": HOOK}, headers=bob.headers).status_code == 201
    assert _count(sessions) == 4


def test_another_tenant_cannot_see_list_delete_or_read_deliveries(
    api: TestClient, alice: Tenancy, bob: Tenancy
) -> None:
    hook = api.post("/v1/webhooks", json={"url": HOOK}, headers=alice.headers).json()
    path = f"/v1/webhooks/{hook['id']}"
    assert api.get("/v1/webhooks", headers=bob.headers).json()["items"] == []
    assert api.get(path, headers=bob.headers).status_code == 404
    assert api.delete(path, headers=bob.headers).status_code == 404
    assert api.get(f"{path}/deliveries", headers=bob.headers).status_code == 404
    assert api.get(path, headers=alice.headers).status_code == 200  # still there

    assert api.delete(path, headers=alice.headers).status_code == 204
    assert api.get(path, headers=alice.headers).status_code == 404
    assert api.delete(path, headers=alice.headers).status_code == 404
    assert api.get(f"/v1/webhooks/{uuid.uuid4()}", headers=alice.headers).status_code == 404
    assert api.get("/v1/webhooks/not-an-id", headers=alice.headers).status_code == 404


def test_deliveries_list_every_attempt(
    api: TestClient,
    alice: Tenancy,
    loopback_settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    settings = loopback_settings.model_copy(update={"webhook_retry_base_s": 0.01})
    with Receiver([500, 200]).running() as receiver:
        hook = api.post("/v1/webhooks", json={"url": receiver.url}, headers=alice.headers).json()
        with sessions() as s, s.begin():
            job = create_job(s, alice.id, status=JobStatus.succeeded)
            s.add(JobEvent(job_id=job.id, seq=1, kind="state", status="succeeded", data={}))
        dispatch(settings=settings, sessions=sessions)
        r = api.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=alice.headers)
        [pending] = r.json()["items"]
        assert (pending["state"], pending["attempts"]) == ("pending", 1)
        assert pending["next_attempt_at"] is not None
        time.sleep(0.03)
        dispatch(settings=settings, sessions=sessions)
        assert len(receiver.received) == 2

    r = api.get(f"/v1/webhooks/{hook['id']}/deliveries", headers=alice.headers)
    assert r.status_code == 200
    [delivery] = r.json()["items"]
    assert delivery["id"] == receiver.received[0].headers["webhook-id"]
    assert delivery["job_id"] == str(job.id)
    assert delivery["event_type"] == "job.succeeded"
    assert (delivery["state"], delivery["attempts"]) == ("delivered", 2)
    assert delivery["next_attempt_at"] is None
    assert delivery["last_status_code"] == 200
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 200]
    assert delivery["attempt_log"][0]["error"] == "the endpoint answered 500"
