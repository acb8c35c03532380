"""Webhooks end to end: the real `kdserve api` and `kdserve worker` (with beat) processes,
a tenant registering a real receiver on 127.0.0.1 (loopback allowed for this stack), a job
reaching its final state (its event row written here, as the runner would), and the worker
delivering it: refused once with a 500, then accepted, under one webhook-id, both signed.

Redis database 10: a broker of its own, since every stack's worker also reads the shared
``default`` queue, where the dispatcher's rounds go."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from client import KDServeAPIError, KDServeClient
from store.db import make_engine, make_sessionmaker
from store.models import JobEvent, JobStatus, Tenant
from tests.api.factories import create_job
from tests.e2e.stack import KDSERVE, Stack, real_stack
from tests.webhook_receiver import Receiver, documented_verify

REDIS_URL = "redis://127.0.0.1:6379/10"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with real_stack(
        tmp_path_factory.mktemp("stack"),
        redis_url=REDIS_URL,
        db_prefix="kdserve_e2e_hooks",
        extra={
            "KDSERVE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
            "KDSERVE_WEBHOOK_DISPATCH_INTERVAL_S": "0.5",
            "KDSERVE_WEBHOOK_RETRY_BASE_S": "0.5",
        },
    ) as stack:
        yield stack


def _finish_a_job(stack: Stack, tenant_name: str) -> str:
    """A job of the tenant that succeeded, with its final state event (what the runner
    writes when a job ends); its id."""
    engine = make_engine(stack.env["KDSERVE_DATABASE_URL"], pool_size=1)
    try:
        with make_sessionmaker(engine)() as s, s.begin():
            tenant = s.scalars(select(Tenant).where(Tenant.name == tenant_name)).one()
            job = create_job(s, tenant.id, status=JobStatus.succeeded)
            s.add(JobEvent(job_id=job.id, seq=1, kind="state", status="succeeded", data={}))
            return str(job.id)
    finally:
        engine.dispose()


def _wait_delivered(kd: KDServeClient, hook_id: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    items: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        items = kd.list_webhook_deliveries(hook_id)
        if items and items[0]["state"] != "pending":
            return items[0]
        time.sleep(0.2)
    raise AssertionError(f"not delivered in {timeout} s: {items}")


def test_a_final_state_is_delivered_signed_retried_and_recorded(stack: Stack) -> None:
    alice = stack.new_tenant("alice")
    bob = stack.new_tenant("bob")
    with Receiver([500, 200]).running() as receiver:
        hook = alice.add_webhook(receiver.url, description="e2e")
        assert hook["secret"].startswith("whsec_")
        job_id = _finish_a_job(stack, "alice")
        requests = receiver.wait_for(2, timeout=60)
        delivery = _wait_delivered(alice, hook["id"], timeout=30)

    assert len(requests) == 2
    first, second = requests
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery["id"]
    assert first.body == second.body
    for request in requests:
        Webhook(hook["secret"]).verify(request.body, request.headers)
        documented_verify()(hook["secret"], request.headers, request.body)
    payload = json.loads(second.body)
    assert payload["type"] == "job.succeeded"
    assert payload["data"] == alice.get_job(job_id)  # exactly what GET /v1/jobs/{id} says

    assert delivery["state"] == "delivered"
    assert delivery["attempts"] == 2
    assert delivery["job_id"] == job_id
    log = delivery["attempt_log"]
    assert isinstance(log, list)
    assert [a["status_code"] for a in log] == [500, 200]

    # Another tenant sees none of it.
    assert bob.list_webhooks() == []
    for call in (
        lambda: bob.get_webhook(hook["id"]),
        lambda: bob.delete_webhook(hook["id"]),
        lambda: bob.list_webhook_deliveries(hook["id"]),
    ):
        with pytest.raises(KDServeAPIError) as err:
            call()
        assert err.value.status == 404
    assert [w["id"] for w in alice.list_webhooks()] == [hook["id"]]
    alice.delete_webhook(hook["id"])
    assert alice.list_webhooks() == []


@pytest.mark.parametrize("url", ["http://10.0.0.1/hooks", "http://169.254.169.254/latest/"])
def test_a_private_address_is_refused_with_422(stack: Stack, url: str) -> None:
    carol = stack.new_tenant("carol")
    with pytest.raises(KDServeAPIError) as err:
        carol.add_webhook(url)
    assert err.value.status == 422
    assert "KDSERVE_WEBHOOK_ALLOWED_NETWORKS" in err.value.detail
    assert carol.list_webhooks() == []


def test_the_cli_adds_lists_and_removes(stack: Stack) -> None:
    key = stack.run("keys", "create", "--tenant", "dave")
    env = {**stack.env, "KDSERVE_URL": stack.url, "KDSERVE_API_KEY": key}
    added = json.loads(_kdserve(env, "webhooks", "add", "http://127.0.0.1:9/x", "--json"))
    assert added["secret"].startswith("whsec_")
    listed = json.loads(_kdserve(env, "webhooks", "list", "--json"))
    assert [w["id"] for w in listed] == [added["id"]]
    assert json.loads(_kdserve(env, "webhooks", "deliveries", added["id"], "--json")) == []
    _kdserve(env, "webhooks", "remove", added["id"])
    assert json.loads(_kdserve(env, "webhooks", "list", "--json")) == []


def _kdserve(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [KDSERVE, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
