"""Webhooks through the client and `kdserve webhooks ...`, on the embedded (SQLite) API
in-process; the dispatcher runs on the same SQLite database."""

from __future__ import annotations

import json
from ipaddress import ip_network

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from api.webhooks.service import new_secret
from cli import remote
from cli.main import app
from client import KDServeAPIError, KDServeClient
from store.db import transaction
from store.keys import hash_key
from store.models import ApiKey, JobEvent, JobStatus
from store.repositories.webhooks import WebhookRepository
from tests.api.factories import create_job
from tests.client.factories import Server
from tests.webhook_receiver import Receiver
from worker.webhooks import dispatch

runner = CliRunner()


@pytest.fixture(autouse=True)
def _in_process(monkeypatch: pytest.MonkeyPatch, server: Server, api_key: str) -> None:
    def make_client(url: str | None, key: str | None) -> KDServeClient:
        kd = KDServeClient(api_key=api_key if key is None else key, http=server.http)
        kd._sleep = lambda _s: None
        return kd

    monkeypatch.setattr(remote, "make_client", make_client)


def test_a_private_address_is_refused_by_the_client_and_the_cli(kd: KDServeClient) -> None:
    with pytest.raises(KDServeAPIError) as err:
        kd.add_webhook("http://169.254.169.254/latest/meta-data")
    assert err.value.status == 422
    assert "a link-local address" in err.value.detail
    added = runner.invoke(app, ["webhooks", "add", "http://127.0.0.1:9/hooks"])
    assert added.exit_code == 2
    assert "HTTP 422" in added.stderr
    assert "KDSERVE_WEBHOOK_ALLOWED_NETWORKS" in added.stderr
    assert kd.list_webhooks() == []


def test_list_deliveries_and_remove(server: Server, api_key: str, kd: KDServeClient) -> None:
    settings = server.settings.model_copy(
        update={"webhook_allowed_networks": [ip_network("127.0.0.0/8")]}
    )
    with Receiver().running() as receiver:
        # Registered as an operator allowing loopback would have; then a job ends.
        with transaction(server.sessions) as s:
            tenant = s.scalar(select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(api_key)))
            assert tenant is not None
            hook = WebhookRepository(s, tenant).add(
                url=receiver.url, description="ci", secret=new_secret()
            )
            hook_id = str(hook.id)
        with transaction(server.sessions) as s:
            job = create_job(s, tenant, status=JobStatus.canceled)
            s.add(JobEvent(job_id=job.id, seq=1, kind="state", status="canceled", data={}))
        assert dispatch(settings=settings, sessions=server.sessions).delivered == 1
        assert json.loads(receiver.received[0].body)["type"] == "job.canceled"

    table = runner.invoke(app, ["webhooks", "list"])
    assert table.exit_code == 0, table.output
    assert hook_id in table.stdout
    assert [w["id"] for w in kd.list_webhooks()] == [hook_id]
    assert kd.get_webhook(hook_id)["description"] == "ci"

    shown = runner.invoke(app, ["webhooks", "deliveries", hook_id])
    assert shown.exit_code == 0, shown.output
    assert "job.canceled" in shown.stdout
    assert "delivered" in shown.stdout
    [delivery] = json.loads(
        runner.invoke(app, ["webhooks", "deliveries", hook_id, "--json"]).stdout
    )
    assert (delivery["state"], delivery["attempts"], delivery["job_id"]) == (
        "delivered",
        1,
        str(job.id),
    )

    removed = runner.invoke(app, ["webhooks", "remove", hook_id])
    assert removed.exit_code == 0, removed.output
    assert f"removed webhook {hook_id}" in removed.stderr
    assert kd.list_webhooks() == []
    again = runner.invoke(app, ["webhooks", "remove", hook_id])
    assert again.exit_code == 2
    assert "HTTP 404" in again.stderr
