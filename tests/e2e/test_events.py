"""Job events through the running service (uvicorn, Celery, Postgres, Redis, S3): a real
job's log, its server-sent events followed live and resumed, ETags, tenancy, the stream
limit and a canceled job's log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import KDServeAPIError, KDServeClient
from client.client import parse_sse
from tests.e2e.stack import STUDENT, Stack, real_stack, upload_digits, wait_job
from tests.metrics import value

pytestmark = pytest.mark.slow

# A Redis database of its own: another module's stack flushes its own at the end.
REDIS_URL = "redis://127.0.0.1:6379/9"
STREAM = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with real_stack(
        tmp_path_factory.mktemp("stack"), redis_url=REDIS_URL, db_prefix="kdserve_events"
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def alice(stack: Stack) -> KDServeClient:
    return stack.new_tenant("alice")


@pytest.fixture(scope="module")
def data(alice: KDServeClient, digits: Path) -> dict[str, str]:
    return upload_digits(alice, digits)


def submit(alice: KDServeClient, data: dict[str, str], epochs: int) -> str:
    config = {"method": "scratch", "epochs": epochs, "batch_size": 64}
    return str(alice.submit_job(student=STUDENT, config=config, **data)["id"])


def raw(stack: Stack, client: KDServeClient, path: str, **headers: str) -> httpx.Response:
    auth = {"Authorization": f"Bearer {client.api_key}"}
    return httpx.get(f"{stack.url}{path}", headers={**auth, **headers}, timeout=60)


def test_a_real_job_streams_its_life_live_and_resumes_exactly_after_last_event_id(
    stack: Stack, alice: KDServeClient, data: dict[str, str]
) -> None:
    before = httpx.get(f"{stack.url}/metrics", timeout=30).text
    job_id = submit(alice, data, epochs=3)
    seen: list[dict[str, Any]] = []
    for event in alice.job_events(job_id):
        seen.append(event)
        if len(seen) == 3:
            break  # the connection drops; the rest comes from a new one
    seen += alice.job_events(job_id, after=seen[-1]["id"])

    logged = alice.list_job_events(job_id)
    assert seen == logged
    assert [e["id"] for e in logged] == list(range(1, len(logged) + 1))
    assert [(e["kind"], e["status"]) for e in logged] == [
        ("state", "queued"),
        ("state", "running"),
        ("epoch", None),
        ("epoch", None),
        ("epoch", None),
        ("state", "succeeded"),
        ("report", None),
    ], stack.log("worker")
    epochs = [e["data"] for e in logged if e["kind"] == "epoch"]
    assert [(d["stage"], d["epoch"], d["step"]) for d in epochs] == [
        ("scratch", 1, 1),
        ("scratch", 2, 2),
        ("scratch", 3, 3),
    ]
    assert [d["progress"] for d in epochs] == sorted(d["progress"] for d in epochs)
    assert all("val_accuracy" in d["metrics"] for d in epochs)
    # /metrics counts this job's transitions from the same log (no other job runs meanwhile)
    after = httpx.get(f"{stack.url}/metrics", timeout=30).text
    for status in ("queued", "running", "succeeded"):
        grew = value(after, "kdserve_job_transitions_total", status=status) - value(
            before, "kdserve_job_transitions_total", status=status
        )
        assert grew == 1, status
    report = logged[-1]["data"]
    job = alice.get_job(job_id)
    assert report["metrics"] == job["metrics"]
    assert "report.json" in report["artifacts"]

    # A reconnecting EventSource sends Last-Event-ID: exactly the later events come back.
    r = raw(stack, alice, f"/v1/jobs/{job_id}/events", **STREAM, **{"Last-Event-ID": "2"})
    assert r.status_code == 200
    assert list(parse_sse(r.text.splitlines())) == logged[2:]

    bob = stack.new_tenant("bob")
    with pytest.raises(KDServeAPIError) as info:
        bob.list_job_events(job_id)
    assert info.value.status == 404
    with pytest.raises(KDServeAPIError) as info:
        next(bob.job_events(job_id))
    assert info.value.status == 404


def test_etags_streams_limit_and_a_canceled_jobs_log(
    stack: Stack, alice: KDServeClient, data: dict[str, str]
) -> None:
    job_id = submit(alice, data, epochs=200)
    path = f"/v1/jobs/{job_id}"
    first = raw(stack, alice, path)
    etag = first.headers["etag"]
    assert raw(stack, alice, path, **{"If-None-Match": etag}).status_code == 304

    # Eight streams per tenant by default (KDSERVE_MAX_EVENT_STREAMS_PER_TENANT): the
    # ninth is a 429 with Retry-After, and a closed stream gives its slot back.
    with httpx.Client(base_url=stack.url, timeout=60) as http, ExitStack() as streams:
        headers = {"Authorization": f"Bearer {alice.api_key}", **STREAM}
        for _ in range(8):
            r = streams.enter_context(http.stream("GET", f"{path}/events", headers=headers))
            assert r.status_code == 200
        refused = http.get(f"{path}/events", headers=headers)
        assert refused.status_code == 429
        assert refused.headers["retry-after"]
        assert "KDSERVE_MAX_EVENT_STREAMS_PER_TENANT" in refused.json()["detail"]
    deadline = time.monotonic() + 10
    while True:  # the server sees the closed connections within a moment
        with httpx.Client(base_url=stack.url, timeout=60) as http, ExitStack() as streams:
            opened = [
                streams.enter_context(http.stream("GET", f"{path}/events", headers=headers))
                for _ in range(8)
            ]
            if all(r.status_code == 200 for r in opened):
                break
        assert time.monotonic() < deadline, [r.status_code for r in opened]
        time.sleep(0.2)

    wait_job(alice, job_id, lambda j: j["status"] == "running", timeout=300)
    logged = []
    for event in alice.job_events(job_id):  # followed live: cancel after its first epoch
        logged.append(event)
        if event["kind"] == "epoch" and len([e for e in logged if e["kind"] == "epoch"]) == 1:
            assert alice.get_job(job_id)["status"] == "running"
            alice.cancel_job(job_id)
    assert [(e["kind"], e["status"]) for e in logged][:2] == [
        ("state", "queued"),
        ("state", "running"),
    ]
    last = logged[-1]
    assert (last["kind"], last["status"], last["data"]["error"]["code"]) == (
        "state",
        "canceled",
        "canceled",
    )
    assert all(e["kind"] == "epoch" for e in logged[2:-1])
    changed = raw(stack, alice, path, **{"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["status"] == "canceled"
    assert changed.headers["etag"] != etag
