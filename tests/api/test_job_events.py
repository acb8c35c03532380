"""``GET /v1/jobs/{id}/events`` (JSON pages and server-sent events) and ETags, in-process
over Postgres; the worker's side is written with the repository the worker uses."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from client.client import parse_sse
from store.db import transaction
from store.models import JobStatus, utcnow
from store.repositories.runs import NewArtifact, RunRepository
from tests.api.factories import Tenancy, create_dataset

MLP = {"family": "mlp", "hidden": [8]}
STREAM = {"Accept": "text/event-stream"}


def submit(client: TestClient, sessions: sessionmaker[Session], who: Tenancy) -> str:
    with sessions() as s, s.begin():
        dataset = str(create_dataset(s, who.id).id)
    body = {"dataset_id": dataset, "student": MLP, "config": {"method": "scratch", "epochs": 2}}
    r = client.post("/v1/jobs", headers=who.headers, json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def run_to_success(sessions: sessionmaker[Session], job_id: str, epochs: int = 2) -> None:
    """What a worker writes: claim, one epoch at a time, then success with a report."""
    jid, now = uuid.UUID(job_id), utcnow()
    with transaction(sessions) as s:
        RunRepository(s).claim(jid, lease="l", now=now, stale_before=now, max_attempts=3)
    for step in range(1, epochs + 1):
        with transaction(sessions) as s:
            RunRepository(s).record_epoch(
                jid,
                lease="l",
                now=utcnow(),
                step=step,
                points={"val_accuracy": step / 10},
                stage="scratch",
                epoch=step,
                progress=step / epochs,
            )
    with transaction(sessions) as s:
        artifact = NewArtifact("report.json", "file:///r", 2, "0" * 64)
        RunRepository(s).succeed(
            jid, lease="l", now=utcnow(), artifacts=[artifact], metrics={"student_accuracy": 0.9}
        )


def events(client: TestClient, who: Tenancy, job_id: str, **params: Any) -> Any:
    r = client.get(f"/v1/jobs/{job_id}/events", headers=who.headers, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def stream(client: TestClient, who: Tenancy, job_id: str, **headers: str) -> list[Any]:
    r = client.get(f"/v1/jobs/{job_id}/events", headers={**who.headers, **STREAM, **headers})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return list(parse_sse(r.text.splitlines()))


def test_a_job_logs_queued_running_each_epoch_succeeded_and_its_report(
    client: TestClient, sessions: sessionmaker[Session], alice: Tenancy
) -> None:
    job_id = submit(client, sessions, alice)
    assert events(client, alice, job_id)["items"][0]["data"] == {
        "status": "queued",
        "error": None,
        "reason": "submitted",
    }
    run_to_success(sessions, job_id)

    page = events(client, alice, job_id)
    items = page["items"]
    assert [(e["id"], e["kind"], e["status"]) for e in items] == [
        (1, "state", "queued"),
        (2, "state", "running"),
        (3, "epoch", None),
        (4, "epoch", None),
        (5, "state", "succeeded"),
        (6, "report", None),
    ]
    assert page["next_after"] is None
    assert [e["data"]["epoch"] for e in items[2:4]] == [1, 2]
    assert items[3]["data"]["metrics"] == {"val_accuracy": 0.2}
    assert items[5]["data"]["metrics"] == {"student_accuracy": 0.9}
    assert items[5]["data"]["artifacts"] == ["report.json"]

    first = events(client, alice, job_id, after=1, limit=2)
    assert [e["id"] for e in first["items"]] == [2, 3]
    assert first["next_after"] == 3
    rest = events(client, alice, job_id, after=first["next_after"], limit=3)
    assert ([e["id"] for e in rest["items"]], rest["next_after"]) == ([4, 5, 6], None)
    assert events(client, alice, job_id, after=6)["items"] == []
    for bad in ({"limit": 0}, {"limit": 1001}, {"after": -1}):
        r = client.get(f"/v1/jobs/{job_id}/events", headers=alice.headers, params=bad)
        assert r.status_code == 422, bad


def test_the_stream_sends_every_event_in_order_and_resumes_after_last_event_id(
    client: TestClient, sessions: sessionmaker[Session], alice: Tenancy
) -> None:
    job_id = submit(client, sessions, alice)
    run_to_success(sessions, job_id, epochs=3)
    whole = events(client, alice, job_id)["items"]

    r = client.get(f"/v1/jobs/{job_id}/events", headers={**alice.headers, **STREAM})
    assert "retry: 2000" in r.text
    frames = [block for block in r.text.split("\n\n") if block.startswith("event:")]
    assert frames[0].splitlines()[:1] == ["event: state"]
    assert frames[0].splitlines()[-1] == "id: 1"
    assert stream(client, alice, job_id) == whole  # the stream ends after the report

    assert stream(client, alice, job_id, **{"Last-Event-ID": "4"}) == whole[4:]
    r = client.get(
        f"/v1/jobs/{job_id}/events", headers={**alice.headers, **STREAM}, params={"after": 5}
    )
    assert list(parse_sse(r.text.splitlines())) == whole[5:]
    assert stream(client, alice, job_id, **{"Last-Event-ID": str(len(whole))}) == []


def test_another_tenant_gets_404_for_the_events(
    client: TestClient, sessions: sessionmaker[Session], alice: Tenancy, bob: Tenancy
) -> None:
    job_id = submit(client, sessions, alice)
    for headers in (bob.headers, {**bob.headers, **STREAM}):
        r = client.get(f"/v1/jobs/{job_id}/events", headers=headers)
        assert r.status_code == 404
        assert r.json()["code"] == "not_found"
    assert client.get(f"/v1/jobs/{uuid.uuid4()}/events", headers=alice.headers).status_code == 404


def test_a_job_answers_304_while_unchanged_and_200_once_it_changes(
    client: TestClient, sessions: sessionmaker[Session], alice: Tenancy, bob: Tenancy
) -> None:
    job_id = submit(client, sessions, alice)
    url = f"/v1/jobs/{job_id}"
    first = client.get(url, headers=alice.headers)
    etag = first.headers["etag"]
    assert etag.startswith('"')
    again = client.get(url, headers={**alice.headers, "If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    for listed in (f'"x", W/{etag}', "*"):
        r = client.get(url, headers={**alice.headers, "If-None-Match": listed})
        assert r.status_code == 304, listed
    other = client.get(url, headers={**alice.headers, "If-None-Match": '"stale"'})
    assert (other.status_code, other.json()) == (200, first.json())
    assert client.get(url, headers={**bob.headers, "If-None-Match": "*"}).status_code == 404

    client.post(f"{url}/cancel", headers=alice.headers)
    changed = client.get(url, headers={**alice.headers, "If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.json()["status"] == "canceled"
    assert changed.headers["etag"] != etag

    page = client.get(f"{url}/events", headers=alice.headers)
    tag = page.headers["etag"]
    same = client.get(f"{url}/events", headers={**alice.headers, "If-None-Match": tag})
    assert same.status_code == 304


def test_a_canceled_queued_job_logs_canceled_with_its_error_and_its_stream_ends(
    client: TestClient, sessions: sessionmaker[Session], alice: Tenancy
) -> None:
    job_id = submit(client, sessions, alice)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=alice.headers).status_code == 202
    sent = stream(client, alice, job_id)
    assert [(e["kind"], e["status"]) for e in sent] == [("state", "queued"), ("state", "canceled")]
    assert sent[-1]["data"]["error"] == {
        "code": "canceled",
        "message": "canceled before it started",
    }
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=alice.headers).status_code == 409
    assert len(events(client, alice, job_id)["items"]) == 2  # a refused cancel logs nothing


def test_a_running_jobs_cancel_is_logged_when_the_worker_stops(
    client: TestClient, sessions: sessionmaker[Session], alice: Tenancy
) -> None:
    job_id = submit(client, sessions, alice)
    jid, now = uuid.UUID(job_id), utcnow()
    with transaction(sessions) as s:
        RunRepository(s).claim(jid, lease="l", now=now, stale_before=now, max_attempts=3)
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=alice.headers)
    assert r.json()["cancel_requested"] is True
    assert [e["status"] for e in events(client, alice, job_id)["items"]] == ["queued", "running"]
    with transaction(sessions) as s:  # what the worker writes once its sandbox stopped
        RunRepository(s).finish(
            jid,
            lease="l",
            status=JobStatus.canceled,
            now=utcnow(),
            error_code="canceled",
            error_message="stopped at the user's request",
        )
    last = stream(client, alice, job_id)[-1]
    assert (last["status"], last["data"]["error"]["code"]) == ("canceled", "canceled")


@pytest.mark.parametrize(
    ("accept", "streams"),
    [
        ("text/event-stream", True),
        ("application/json, text/event-stream;q=0.5", True),
        ("text/event-stream;q=0", False),
        ("application/json", False),
        ("*/*", False),
    ],
)
def test_only_an_accept_naming_the_event_stream_gets_one(accept: str, streams: bool) -> None:
    from api.jobs.events import wants_stream

    assert wants_stream(accept) is streams


@pytest.mark.parametrize(
    ("last_event_id", "after", "start"),
    [("4", None, 4), (" 7 ", 2, 7), (None, 3, 3), ("x", 3, 3), ("\u00b2", None, 0), ("", None, 0)],
)
def test_a_stream_resumes_after_last_event_id_else_after(
    last_event_id: str | None, after: int | None, start: int
) -> None:
    from api.jobs.events import resume_point

    assert resume_point(last_event_id, after) == start


def test_a_sweeps_points_log_queued_and_its_cancel_logs_canceled(
    client: TestClient, sessions: sessionmaker[Session], alice: Tenancy
) -> None:
    with sessions() as s, s.begin():
        dataset = str(create_dataset(s, alice.id).id)
    config = {"method": "scratch", "epochs": 2, "batch_size": 8}
    base = {"dataset_id": dataset, "student": MLP, "config": config}
    r = client.post(
        "/v1/sweeps", headers=alice.headers, json={"base": base, "grid": {"seed": [1, 2]}}
    )
    assert r.status_code == 202, r.text
    sweep = r.json()
    jobs = [p["job_id"] for p in sweep["points"]]
    for job_id in jobs:
        assert [e["status"] for e in events(client, alice, job_id)["items"]] == ["queued"]

    assert client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=alice.headers).status_code == 202
    for job_id in jobs:
        last = events(client, alice, job_id)["items"][-1]
        assert (last["status"], last["data"]["error"]["code"]) == ("canceled", "canceled")
