"""``KDServeClient.job_events`` over a connection that drops: it reconnects with
``Last-Event-ID`` and yields every event once. (A scripted transport: the server side is
tested over HTTP in tests/api/test_job_events.py and tests/e2e/test_events.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from client import KDServeAPIError, KDServeClient


def frame(seq: int, kind: str, status: str | None = None) -> bytes:
    event = {"id": seq, "kind": kind, "status": status, "data": {}, "created_at": "now"}
    return f"event: {kind}\nid: {seq}\ndata: {json.dumps(event)}\n\n".encode()


class Dropped(httpx.SyncByteStream):
    """Sends ``chunks``, then the connection breaks."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        raise httpx.ReadError("connection reset")


def client(handler: Any) -> KDServeClient:
    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://kd")
    kd = KDServeClient(api_key="kds_x", http=http)
    kd._sleep = lambda _s: None
    return kd


def test_a_dropped_stream_resumes_after_the_last_event_it_delivered() -> None:
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("last-event-id"))
        assert request.headers["accept"] == "text/event-stream"
        if len(asked) == 1:
            start = b": hello\nretry: 2000\n\n" + frame(1, "state", "queued")
            stream = Dropped(start, frame(2, "state", "running"), b"event: epoch\nid: 3\nda")
            return httpx.Response(200, stream=stream)
        body = frame(3, "epoch") + frame(4, "state", "succeeded") + frame(5, "report")
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    events = list(client(handler).job_events("j"))

    assert [e["id"] for e in events] == [1, 2, 3, 4, 5]
    assert asked == [None, "2"]  # the half-sent third event came again, whole


def test_a_stream_that_ends_early_is_reopened_until_the_job_is_final() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/v1/jobs/j":
            return httpx.Response(200, json={"id": "j", "status": "failed"})
        if len(calls) == 1:  # the server's time limit ended it: the job runs on
            return httpx.Response(200, content=frame(1, "state", "queued"))
        return httpx.Response(200, content=b"")

    events = list(client(handler).job_events("j"))

    assert [e["id"] for e in events] == [1]
    assert calls == ["/v1/jobs/j/events", "/v1/jobs/j", "/v1/jobs/j/events"]


def test_an_unknown_job_is_the_servers_404() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        problem = {"code": "not_found", "detail": "no job j", "status": 404, "title": "Not found"}
        return httpx.Response(404, json=problem)

    with pytest.raises(KDServeAPIError) as info:
        next(client(handler).job_events("j"))
    assert info.value.status == 404
