"""The webhook dispatcher (``worker/webhooks.py``) against real databases and real HTTP
receivers on 127.0.0.1: what is sent, signed how, retried when, recorded where, and exactly
one delivery per (endpoint, event) with two dispatchers at once.

Job events are inserted here through the ORM: the code that writes them is not the
dispatcher's."""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from functools import partial
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from api.jobs.service import to_public
from api.webhooks.service import new_secret
from store.db import transaction
from store.models import DeliveryState, Job, JobEvent, JobStatus, WebhookDelivery
from store.repositories.webhooks import Claimed, WebhookRepository
from store.settings import Settings
from tests.api.factories import create_job
from tests.webhook_receiver import Received, Receiver, documented_verify
from tests.worker.factories import Env, create_tenant
from worker.webhooks import attempt_all, dispatch, retry_delay, sign

LOOPBACK = [ip_network("127.0.0.0/8"), ip_network("::1/128")]
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the specification's example


def _settings(env: Env, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "webhook_allowed_networks": LOOPBACK,
        "webhook_retry_base_s": 0.01,  # retries due at once: the tests call rounds by hand
        "webhook_timeout_s": 5.0,
    } | overrides
    return env.settings.model_copy(update=fields)


@dataclass(frozen=True)
class Hook:
    tenant_id: uuid.UUID
    endpoint_id: uuid.UUID
    secret: str


def add_endpoint(
    sessions: sessionmaker[Session], url: str, tenant_id: uuid.UUID | None = None
) -> Hook:
    with transaction(sessions) as s:
        tenant_id = tenant_id or create_tenant(s).id
        secret = new_secret()
        row = WebhookRepository(s, tenant_id).add(url=url, description="", secret=secret)
        return Hook(tenant_id, row.id, secret)


def finish_job(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, status: str = "succeeded"
) -> tuple[uuid.UUID, int]:
    """A job that ended with ``status``, and its state events (running, then ``status``)."""
    with transaction(sessions) as s:
        job = create_job(s, tenant_id, status=JobStatus(status), metrics={"student_accuracy": 0.9})
        s.add(JobEvent(job_id=job.id, seq=1, kind="state", status="running", data={}))
        final = JobEvent(job_id=job.id, seq=2, kind="state", status=status, data={})
        s.add(final)
        s.flush()
        return job.id, final.id


def deliveries(sessions: sessionmaker[Session]) -> list[WebhookDelivery]:
    with sessions() as s:
        return list(s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.created_at)))


def until_quiet(settings: Settings, sessions: sessionmaker[Session], rounds: int = 50) -> None:
    """Run rounds until no delivery is pending. A round that attempts nothing is not proof
    of that: a jittered retry wait may simply not be over yet (a loaded machine)."""
    for _ in range(rounds):
        dispatch(settings=settings, sessions=sessions)
        if all(d.state != DeliveryState.pending for d in deliveries(sessions)):
            return
        time.sleep(0.05)  # past the retry wait (base 0.01 s: 0.01, 0.04, ... jittered)
    raise AssertionError(f"deliveries still pending after {rounds} rounds")


def test_the_signature_is_the_specifications_example() -> None:
    body = '{"test": 2432232314}'
    signature = sign(SPEC_SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": signature,
    }
    verify = documented_verify()
    verify(SPEC_SECRET, headers, body.encode(), tolerance_s=10**10)
    with pytest.raises(ValueError, match="no valid webhook-signature"):
        verify(SPEC_SECRET, headers, body.encode() + b" ", tolerance_s=10**10)
    with pytest.raises(ValueError, match="too far from now"):
        verify(SPEC_SECRET, headers, body.encode())


def test_a_500_then_a_200_is_two_attempts_of_one_delivery_under_one_webhook_id(env: Env) -> None:
    settings = _settings(env)
    with Receiver([500, 200]).running() as receiver:
        hook = add_endpoint(env.sessions, receiver.url)
        job_id, event_id = finish_job(env.sessions, hook.tenant_id, "succeeded")

        first = dispatch(settings=settings, sessions=env.sessions)
        assert (first.created, first.attempted, first.delivered) == (1, 1, 0)
        [pending] = deliveries(env.sessions)
        assert (pending.state, pending.attempts, pending.last_status_code) == ("pending", 1, 500)
        assert pending.last_error == "the endpoint answered 500"

        time.sleep(0.03)
        second = dispatch(settings=settings, sessions=env.sessions)
        assert (second.created, second.attempted, second.delivered) == (0, 1, 1)
        until_quiet(settings, env.sessions)
        got = receiver.received

    assert len(got) == 2
    assert got[0].headers["webhook-id"] == got[1].headers["webhook-id"]
    assert got[0].body == got[1].body
    [done] = deliveries(env.sessions)
    assert got[0].headers["webhook-id"] == str(done.id)
    assert (done.state, done.attempts, done.last_status_code) == ("delivered", 2, 200)
    assert (done.event_id, done.job_id, done.event_type) == (event_id, job_id, "job.succeeded")
    assert [a["status_code"] for a in done.attempt_log] == [500, 200]
    assert done.attempt_log[0]["error"] == "the endpoint answered 500"
    assert done.attempt_log[1]["error"] is None
    assert done.delivered_at is not None

    for request in got:
        _check_signed(request, hook.secret)
        assert request.path == "/hooks"
        assert request.headers["content-type"] == "application/json"
    payload = json.loads(got[0].body)
    with env.sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        public = json.loads(to_public(job).model_dump_json())
        final_at = s.get(JobEvent, event_id)
        assert final_at is not None
    assert payload["type"] == "job.succeeded"
    assert payload["data"] == public  # what GET /v1/jobs/{id} returns
    assert payload["timestamp"].startswith(final_at.created_at.isoformat()[:19])


def _check_signed(request: Received, secret: str) -> None:
    """Both the reference library and the documented recipe accept it; another key not."""
    Webhook(secret).verify(request.body, request.headers)
    documented_verify()(secret, request.headers, request.body)
    with pytest.raises(ValueError, match="no valid webhook-signature"):
        documented_verify()(new_secret(), request.headers, request.body)


def test_only_final_states_since_registration_go_to_the_jobs_tenant(env: Env) -> None:
    settings = _settings(env)
    with Receiver().running() as mine, Receiver().running() as theirs:
        with transaction(env.sessions) as s:
            tenant_id = create_tenant(s).id
        before, _ = finish_job(env.sessions, tenant_id, "succeeded")  # before registration
        time.sleep(0.01)
        hook = add_endpoint(env.sessions, mine.url, tenant_id)
        other = add_endpoint(env.sessions, theirs.url)
        with transaction(env.sessions) as s:  # a running job, an epoch: not final
            job = create_job(s, tenant_id, status=JobStatus.running)
            s.add(JobEvent(job_id=job.id, seq=1, kind="state", status="running", data={}))
            s.add(JobEvent(job_id=job.id, seq=2, kind="epoch", status=None, data={"epoch": 1}))
        failed, _ = finish_job(env.sessions, hook.tenant_id, "failed")
        canceled, _ = finish_job(env.sessions, hook.tenant_id, "canceled")
        foreign, _ = finish_job(env.sessions, other.tenant_id, "succeeded")
        until_quiet(settings, env.sessions)
        got = {json.loads(r.body)["data"]["id"]: json.loads(r.body)["type"] for r in mine.received}
        got_other = [json.loads(r.body)["data"]["id"] for r in theirs.received]

    assert got == {str(failed): "job.failed", str(canceled): "job.canceled"}
    assert got_other == [str(foreign)]
    assert str(before) not in got


def test_two_dispatchers_at_once_deliver_each_event_once(pg_env: Env) -> None:
    settings = _settings(pg_env)
    with Receiver().running() as receiver:
        hooks = [add_endpoint(pg_env.sessions, receiver.url) for _ in range(2)]
        events = [finish_job(pg_env.sessions, h.tenant_id) for h in hooks for _ in range(6)]
        errors: list[BaseException] = []

        def run() -> None:
            try:
                for _ in range(4):
                    dispatch(settings=settings, sessions=pg_env.sessions)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        until_quiet(settings, pg_env.sessions)
        ids = [r.headers["webhook-id"] for r in receiver.received]

    assert len(ids) == len(events) == 12
    assert len(set(ids)) == 12  # each delivery attempted once: no duplicate sends
    rows = deliveries(pg_env.sessions)
    assert len(rows) == 12
    assert {r.state for r in rows} == {DeliveryState.delivered}
    assert all(r.attempts == 1 for r in rows)
    with pg_env.sessions() as s:
        pairs = s.scalar(
            select(func.count()).select_from(
                select(WebhookDelivery.endpoint_id, WebhookDelivery.event_id).distinct().subquery()
            )
        )
    assert pairs == 12


def test_a_slow_endpoint_costs_a_round_its_timeout_and_blocks_no_one(env: Env) -> None:
    settings = _settings(env, webhook_timeout_s=1.0)
    with Receiver(delay_s=4.0).running() as slow, Receiver().running() as fast:
        slow_hook = add_endpoint(env.sessions, slow.url)
        fast_hook = add_endpoint(env.sessions, fast.url)
        finish_job(env.sessions, slow_hook.tenant_id)
        finish_job(env.sessions, fast_hook.tenant_id)
        start = time.monotonic()
        done = dispatch(settings=settings, sessions=env.sessions)
        took = time.monotonic() - start
        assert len(fast.received) == 1
    assert (done.attempted, done.delivered) == (2, 1)
    assert took < 3.0, f"the round took {took:.1f} s"
    rows = {r.endpoint_id: r for r in deliveries(env.sessions)}
    assert rows[fast_hook.endpoint_id].state == DeliveryState.delivered
    late = rows[slow_hook.endpoint_id]
    assert (late.state, late.attempts, late.last_status_code) == ("pending", 1, None)
    assert late.last_error == "no answer within 1 s (KDSERVE_WEBHOOK_TIMEOUT_S)"


def test_a_delivery_out_of_attempts_fails_and_is_not_sent_again(env: Env) -> None:
    settings = _settings(env, webhook_max_attempts=3)
    with Receiver([503]).running() as receiver:
        hook = add_endpoint(env.sessions, receiver.url)
        finish_job(env.sessions, hook.tenant_id, "failed")
        until_quiet(settings, env.sessions)
        time.sleep(0.05)
        assert dispatch(settings=settings, sessions=env.sessions).attempted == 0
        assert len(receiver.received) == 3
    [row] = deliveries(env.sessions)
    assert (row.state, row.attempts, row.last_status_code) == ("failed", 3, 503)
    assert [a["status_code"] for a in row.attempt_log] == [503, 503, 503]


def test_redirects_are_not_followed(env: Env) -> None:
    settings = _settings(env)
    with (
        Receiver().running() as elsewhere,
        Receiver([307], location=elsewhere.url).running() as receiver,
    ):
        hook = add_endpoint(env.sessions, receiver.url)
        finish_job(env.sessions, hook.tenant_id)
        dispatch(settings=settings, sessions=env.sessions)
        assert len(receiver.received) == 1
        assert elsewhere.received == []
    [row] = deliveries(env.sessions)
    assert row.last_error == "the endpoint answered 307 (redirects are not followed)"
    assert row.state == DeliveryState.pending


def test_an_address_refused_at_delivery_time_is_never_contacted(env: Env) -> None:
    """DNS rebinding: the endpoint was accepted once, but its host now resolves to an address
    the rule refuses (here: loopback, no longer allowed). The attempt never connects."""
    settings = _settings(env, webhook_allowed_networks=[])
    with Receiver().running() as receiver:
        hook = add_endpoint(env.sessions, receiver.url)
        finish_job(env.sessions, hook.tenant_id)
        done = dispatch(settings=settings, sessions=env.sessions)
        assert receiver.received == []
    assert (done.attempted, done.delivered) == (1, 0)
    [row] = deliveries(env.sessions)
    assert row.state == DeliveryState.pending
    assert row.last_error is not None
    assert "127.0.0.1, a loopback address" in row.last_error
    assert "KDSERVE_WEBHOOK_ALLOWED_NETWORKS" in row.last_error


def test_deleting_an_endpoint_stops_its_deliveries(env: Env) -> None:
    settings = _settings(env)
    with Receiver([500]).running() as receiver:
        hook = add_endpoint(env.sessions, receiver.url)
        finish_job(env.sessions, hook.tenant_id)
        dispatch(settings=settings, sessions=env.sessions)
        with transaction(env.sessions) as s:
            repo = WebhookRepository(s, hook.tenant_id)
            endpoint = repo.get(hook.endpoint_id)
            assert endpoint is not None
            repo.delete(endpoint)
        until_quiet(settings, env.sessions)
        assert len(receiver.received) == 1
    assert deliveries(env.sessions) == []


def test_retry_waits_grow_fourfold_with_jitter_up_to_the_maximum(env: Env) -> None:
    settings = _settings(env, webhook_retry_base_s=10.0, webhook_retry_max_s=3600.0)
    for n, full in [(1, 10), (2, 40), (3, 160), (4, 640), (5, 2560), (6, 3600), (12, 3600)]:
        waits = [retry_delay(n, settings) for _ in range(200)]
        assert full * 0.5 <= min(waits) < max(waits) <= full


def _certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``name`` (openssl), and its key."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
            "-addext", f"subjectAltName=DNS:{name}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize(("cert_name", "ok"), [("localhost", True), ("example.org", False)])
def test_https_connects_to_the_checked_address_but_checks_the_urls_host(
    tmp_path: Path, cert_name: str, ok: bool
) -> None:
    """The attempt connects to the address it resolved and checked, yet TLS (SNI and the
    certificate) and the Host header still use the URL's host name: a certificate for
    another name is refused."""
    cert, key = _certificate(tmp_path, cert_name)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    trust = ssl.create_default_context(cafile=str(cert))
    settings = Settings(webhook_allowed_networks=LOOPBACK, webhook_timeout_s=5.0)
    with Receiver(tls=server_tls, host="localhost").running() as receiver:
        claimed = Claimed(uuid.uuid4(), "lease", 0, receiver.url, new_secret(), '{"a": 1}')
        [outcome] = anyio.run(partial(attempt_all, [claimed], settings, verify=trust))
        got = list(receiver.received)
    if ok:
        assert (outcome.status_code, outcome.error) == (200, None)
        assert got[0].headers["host"] == f"localhost:{receiver.port}"
        documented_verify()(claimed.secret, got[0].headers, got[0].body)
    else:
        assert outcome.status_code is None
        assert outcome.error is not None
        assert "hostname mismatch" in outcome.error.lower(), outcome.error
        assert got == []
