"""Bounded cost and fair share (issue 11), over HTTP against a real `kdserve api` process on
the real PostgreSQL and Redis: the key is checked before a body is read, bodies are bounded,
no request holds a database session while it waits on its client, limits hold under
concurrent requests, and one tenant's backlog waits behind another tenant's first items.

The API runs with its default database pool of 10 sessions: 20 stalled uploads that each
held a session would leave a GET waiting 30 s for a 503."""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from kdcore.contract import layer_shapes, parse_arch
from store.db import make_engine, make_sessionmaker
from store.models import DatasetRecord, Job, Teacher, UploadSlot, utcnow
from store.repositories.catalog import stored_bytes
from tests.api.factories import Tenancy, create_dataset, create_teacher, make_tenant
from tests.broker import queued
from tests.e2e.stack import Stack, flush_redis, service_env
from tests.pg import fresh_database
from tests.s3 import free_port

REDIS_URL = "redis://127.0.0.1:6379/11"
PROBLEM = "application/problem+json"
MiB = 1024 * 1024
LIMITS = {
    "KDSERVE_MAX_RUNNING_JOBS_PER_TENANT": "4",
    "KDSERVE_MAX_STORED_BYTES_PER_TENANT": "100000",
    "KDSERVE_MAX_CONCURRENT_UPLOADS_PER_TENANT": "10",
    "KDSERVE_MAX_VALIDATING_UPLOADS_PER_TENANT": "12",
}
SCRATCH = {"student": {"family": "mlp", "hidden": [8]}, "config": {"method": "scratch"}}


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    with fresh_database("kdserve_fair") as url:
        yield url


@pytest.fixture(scope="module")
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@contextmanager
def api_process(home: Path, db_url: str, **settings: str) -> Iterator[Stack]:
    """A `kdserve api` process (no worker) on ``db_url``, with local storage under ``home``."""
    env = service_env(home, database_url=db_url, broker_url=REDIS_URL, port=free_port(), extra={})
    stack = Stack(home=home, env={**env, **settings}, port=int(env["KDSERVE_API_PORT"]))
    stack.run("db", "upgrade")
    stack.start_api()
    try:
        yield stack
    finally:
        stack.stop()
        flush_redis(REDIS_URL)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Stack]:
    with api_process(tmp_path_factory.mktemp("fair"), db_url, **LIMITS) as stack:
        yield stack


@pytest.fixture
def tenant(api: Stack, sessions: sessionmaker[Session]) -> Callable[[], Tenancy]:
    """A new tenant each call (limits are per tenant: tests do not share one)."""
    return lambda: make_tenant(sessions, f"t-{uuid.uuid4().hex[:8]}")


# -- authenticate first, then read ---------------------------------------------------------


def test_an_anonymous_body_gets_its_401_before_it_is_read(
    api: Stack, tenant: Callable[[], Tenancy]
) -> None:
    """A 100 MB body declared and never sent: the 401 comes back at once, the same for a
    key whose tenant exists (wrong secret) and one whose tenant does not."""
    real = tenant().key
    wrong_secret = real[: real.rindex("_") + 1] + "x" * 43
    answers = []
    for key in (wrong_secret, "kds_000000000000_" + "x" * 43, None):
        status, headers, body = _raw(
            api, "POST", "/v1/jobs", key=key, declared=100 * MiB, content_type="application/json"
        )
        assert status == 401
        assert headers["content-type"] == PROBLEM
        assert headers["www-authenticate"] == "Bearer"
        answers.append(body)
    assert answers[0] == answers[1] == answers[2]
    assert json.loads(answers[0])["code"] == "unauthorized"


def test_an_anonymous_100_mb_body_does_not_grow_the_api(api: Stack) -> None:
    """The same body sent whole: 401, and the API's peak memory grows by less than 30 MiB (a
    body read before the key check grew it by hundreds)."""
    pid = api.procs["api"].pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # restart the peak (VmHWM) from now
    before = _memory(pid)
    body = b'{"config": [' + b"0," * (50 * MiB) + b"0]}"
    r = httpx.post(
        f"{api.url}/v1/jobs", content=body, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert r.status_code == 401
    after = _memory(pid)
    assert after["VmHWM"] - before["VmRSS"] < 30 * MiB, (before, after)


def test_a_json_body_over_its_limit_is_413_even_before_it_is_read(
    api: Stack, tenant: Callable[[], Tenancy]
) -> None:
    t = tenant()
    headers = {**t.headers, "Content-Type": "application/json"}
    # declared: refused before a byte of the body is read
    status, _, raw = _raw(
        api, "POST", "/v1/jobs", key=t.key, declared=2 * MiB, content_type="application/json"
    )
    assert status == 413
    problem = json.loads(raw)
    assert problem["code"] == "too_large"
    assert "KDSERVE_MAX_JSON_BODY_BYTES" in problem["detail"]
    # whole, to a JSON route and to an upload route's JSON form
    big = b'{"name": "' + b"x" * (2 * MiB) + b'"}'
    for path in ("/v1/jobs", "/v1/sweeps", "/v1/teachers"):
        r = httpx.post(f"{api.url}{path}", content=big, headers=headers, timeout=30)
        assert r.status_code == 413, (path, r.text)
        assert r.headers["content-type"] == PROBLEM
        assert "1,048,576-byte limit (KDSERVE_MAX_JSON_BODY_BYTES)" in r.json()["detail"]

    # undeclared (chunked): cut off once the bytes received pass the limit
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(4):
            yield b"x" * MiB
        yield b'"}'

    r = httpx.post(f"{api.url}/v1/jobs", content=chunks(), headers=headers, timeout=30)
    assert r.status_code == 413
    assert "KDSERVE_MAX_JSON_BODY_BYTES" in r.json()["detail"]
    assert _count(api, t, "jobs") == 0


# -- limits that concurrent requests cannot pass -------------------------------------------


def test_twenty_simultaneous_submissions_against_a_limit_of_four_accept_exactly_four(
    api: Stack, tenant: Callable[[], Tenancy], sessions: sessionmaker[Session]
) -> None:
    t = tenant()
    with sessions() as s, s.begin():
        dataset_id = str(create_dataset(s, t.id).id)
    body = {"dataset_id": dataset_id, **SCRATCH}
    answers = _at_once(20, lambda _i: _post(api, "/v1/jobs", t, json=body))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [202] * 4 + [429] * 16
    for r in answers:
        if r.status_code == 429:
            assert r.headers["retry-after"]
            assert r.headers["content-type"] == PROBLEM
            assert "wait for one to finish or cancel one" in r.json()["detail"]
    with sessions() as s:
        assert s.scalar(select(func.count()).where(Job.tenant_id == t.id)) == 4


def test_ten_simultaneous_uploads_never_pass_the_stored_bytes_quota(
    api: Stack, tenant: Callable[[], Tenancy], sessions: sessionmaker[Session]
) -> None:
    """10 uploads of 30,000 bytes at once against a 100,000-byte quota: each fits alone, so
    all stream; the quota is counted exactly as each is recorded, so three are kept (90,000
    bytes) and seven are 413 with nothing stored."""
    t = tenant()

    def slowly(data: bytes) -> Iterator[bytes]:  # so that all ten stream at the same time
        for part in range(0, len(data), 10_000):
            time.sleep(0.3)
            yield data[part : part + 10_000]

    answers = _at_once(
        10,
        lambda i: _post(
            api,
            "/v1/datasets",
            t,
            content=slowly(os.urandom(30_000)),
            params={"filename": f"{i}.npz"},
        ),
    )
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [201] * 3 + [413] * 7, [r.text for r in answers]
    for r in answers:
        if r.status_code == 413:
            assert r.json()["code"] == "quota_exceeded"
            assert "of its 100,000 stored bytes" in r.json()["detail"]
    with sessions() as s:
        assert stored_bytes(s, t.id) == 90_000
        assert s.scalar(select(func.count()).where(DatasetRecord.tenant_id == t.id)) == 3
    blobs = api.home / "storage" / "tenants" / str(t.id) / "blobs"
    assert len([p for p in blobs.iterdir() if p.is_file()]) == 3


def test_uploads_in_progress_and_validations_in_waiting_have_caps_429_with_retry_after(
    api: Stack, tenant: Callable[[], Tenancy], sessions: sessionmaker[Session]
) -> None:
    t = tenant()
    with _stalled_uploads(api, t, 10, sessions) as stalled:
        r = _post(api, "/v1/datasets", t, content=b"x" * 100, params={"filename": "a.npz"})
        assert r.status_code == 429
        assert r.headers["retry-after"]
        assert "KDSERVE_MAX_CONCURRENT_UPLOADS_PER_TENANT" in r.json()["detail"]
        assert not any(_answered(s) for s in stalled)
    # Closed connections give their slots back.
    _until(lambda: _slots(sessions, t) == 0, "the stalled uploads' slots are released")
    for i in range(12):  # no worker runs: each stays validating
        r = _post(api, "/v1/datasets", t, content=os.urandom(100), params={"filename": f"{i}.npz"})
        assert r.status_code == 201, r.text
    r = _post(api, "/v1/datasets", t, content=b"x" * 100, params={"filename": "13.npz"})
    assert r.status_code == 429
    assert r.headers["retry-after"]
    assert "KDSERVE_MAX_VALIDATING_UPLOADS_PER_TENANT" in r.json()["detail"]
    assert "12 teachers and datasets waiting for validation" in r.json()["detail"]
    assert _count(api, t, "datasets") == 12


# -- fair share -------------------------------------------------------------------------------


def test_stalled_uploads_and_a_validation_flood_leave_another_tenants_gets_fast(
    api: Stack, tenant: Callable[[], Tenancy], sessions: sessionmaker[Session]
) -> None:
    """20 uploads that send 1,000 of 100,000 bytes and stall (two tenants, 10 each), and a
    third tenant uploading as fast as 6 threads can: a fourth tenant's GET /v1/jobs answers
    200 with p99 under 1 s throughout, and the flood gets 201s and 429s, never a 5xx."""
    stallers, flooder, reader = [tenant(), tenant()], tenant(), tenant()
    with (
        _stalled_uploads(api, stallers[0], 10, sessions) as first,
        _stalled_uploads(api, stallers[1], 10, sessions) as second,
    ):
        flood_statuses: list[int] = []

        def upload(i: int) -> int:
            content = os.urandom(200)
            params = {"filename": f"{i}.npz"}
            return _post(api, "/v1/datasets", flooder, content=content, params=params).status_code

        def flood() -> None:  # 36 uploads, 6 at a time: past the cap of 12 validations
            with ThreadPoolExecutor(6) as pool:
                flood_statuses.extend(pool.map(upload, range(36)))

        flooding = threading.Thread(target=flood)
        flooding.start()
        latencies: list[float] = []
        try:
            with httpx.Client(base_url=api.url, headers=reader.headers, timeout=40) as c:
                while flooding.is_alive() or len(latencies) < 40:
                    started = time.monotonic()
                    r = c.get("/v1/jobs")
                    latencies.append(time.monotonic() - started)
                    assert r.status_code == 200, r.text
        finally:
            flooding.join()
        assert not any(_answered(s) for s in first + second), "the stalled uploads ended early"
    p99 = sorted(latencies)[math.ceil(0.99 * len(latencies)) - 1]
    print(f"another tenant's GET /v1/jobs: p99 {p99 * 1000:.0f} ms over {len(latencies)} GETs")
    assert p99 < 1.0, latencies
    assert sorted(flood_statuses) == [201] * 12 + [429] * 24


def test_another_tenants_first_job_and_validation_go_before_a_backlog(
    api: Stack, tenant: Callable[[], Tenancy], sessions: sessionmaker[Session]
) -> None:
    """On the broker, a tenant's n-th queued item has priority n (capped at 9) and workers
    take lower numbers first: after A's four jobs, B's one is taken second, right after
    A's first; the same for validations."""
    a, b = tenant(), tenant()
    with sessions() as s, s.begin():
        data = {t.id: str(create_dataset(s, t.id).id) for t in (a, b)}
    queue = api.env["KDSERVE_QUEUE"]
    jobs = [_post(api, "/v1/jobs", a, json={"dataset_id": data[a.id], **SCRATCH}) for _ in range(4)]
    jobs.append(_post(api, "/v1/jobs", b, json={"dataset_id": data[b.id], **SCRATCH}))
    ids = [r.json()["id"] for r in jobs]
    taken = [(args[0], level) for _, args, level in queued(REDIS_URL, queue) if args[0] in ids]
    assert taken == [(ids[0], 0), (ids[4], 0), (ids[1], 1), (ids[2], 2), (ids[3], 3)]

    uploads = [
        _post(api, "/v1/datasets", who, content=os.urandom(100), params={"filename": "d.npz"})
        for who in (a, a, a, a, a, b)
    ]
    ids = [r.json()["id"] for r in uploads]
    default = api.env["KDSERVE_DEFAULT_QUEUE"]
    taken = [args[0] for _, args, _ in queued(REDIS_URL, default) if args[0] in ids]
    assert taken == [ids[0], ids[5], ids[1], ids[2], ids[3], ids[4]]


@pytest.mark.slow
def test_a_backlog_of_validations_does_not_delay_another_tenants_upload(
    tmp_path: Path, db_url: str, digits: Path
) -> None:
    """Through a real worker (one at a time): tenant A uploads 6 datasets, then B one. B's
    is checked second or third (after A's first, and at most one more that was already
    running), not seventh: when it is ready, at least 4 of A's still wait."""
    flush_redis(REDIS_URL)  # the other tests' messages, for rows of another database
    with fresh_database("kdserve_fair_worker") as url:
        env = service_env(
            tmp_path, database_url=url, broker_url=REDIS_URL, port=free_port(), extra={}
        )
        stack = Stack(home=tmp_path, env=env, port=int(env["KDSERVE_API_PORT"]))
        try:
            with stack.serving():
                a, b = stack.new_tenant("a"), stack.new_tenant("b")
                backlog = [a.upload_dataset(digits / "digits-test.npz") for _ in range(6)]
                mine = b.upload_dataset(digits / "digits-test.npz")
                assert b.wait_for("datasets", mine["id"], timeout=180)["status"] == "ready"
                waiting = [
                    d
                    for d in backlog
                    if a.get_resource("datasets", d["id"])["status"] == "validating"
                ]
                assert len(waiting) >= 4, backlog
        finally:
            flush_redis(REDIS_URL)


# -- a stalled body is cut off; a dead process's slot expires --------------------------------


def test_a_stalled_upload_is_cut_off_with_408_and_frees_its_slot(
    tmp_path: Path, db_url: str, sessions: sessionmaker[Session]
) -> None:
    settings = {
        "KDSERVE_REQUEST_BODY_IDLE_TIMEOUT_S": "1",
        "KDSERVE_MAX_CONCURRENT_UPLOADS_PER_TENANT": "1",
    }
    with api_process(tmp_path, db_url, **settings) as api:
        t = make_tenant(sessions, f"t-{uuid.uuid4().hex[:8]}")
        with _stalled_uploads(api, t, 1, sessions) as (stalled,):
            started = time.monotonic()
            status, headers, body = _response(stalled)
            assert status == 408
            assert headers["content-type"] == PROBLEM
            assert time.monotonic() - started < 5
            assert "KDSERVE_REQUEST_BODY_IDLE_TIMEOUT_S" in json.loads(body)["detail"]
        _until(lambda: _slots(sessions, t) == 0, "the stalled upload's slot is released")
        r = _post(api, "/v1/datasets", t, content=b"x" * 100, params={"filename": "a.npz"})
        assert r.status_code == 201, r.text

        # A slot left by a killed API process stops counting once it expires.
        with sessions() as s, s.begin():
            s.add(UploadSlot(tenant_id=t.id, expires_at=utcnow() + timedelta(minutes=1)))
        r = _post(api, "/v1/datasets", t, content=b"y" * 100, params={"filename": "b.npz"})
        assert r.status_code == 429
        with sessions() as s, s.begin():
            for slot in s.scalars(select(UploadSlot).where(UploadSlot.tenant_id == t.id)):
                slot.expires_at = utcnow() - timedelta(seconds=1)
        r = _post(api, "/v1/datasets", t, content=b"y" * 100, params={"filename": "b.npz"})
        assert r.status_code == 201, r.text


# -- helpers ----------------------------------------------------------------------------------


def _post(
    api: Stack, path: str, who: Tenancy, headers: dict[str, str] | None = None, **kwargs: Any
) -> httpx.Response:
    sent = dict(who.headers)
    if "content" in kwargs:
        sent["Content-Type"] = "application/octet-stream"
    sent |= headers or {}
    return httpx.post(f"{api.url}{path}", headers=sent, timeout=60, **kwargs)


def _count(api: Stack, who: Tenancy, kind: str) -> int:
    r = httpx.get(f"{api.url}/v1/{kind}", headers=who.headers, params={"limit": 100}, timeout=30)
    assert r.status_code == 200, r.text
    return len(r.json()["items"])


def _at_once(n: int, call: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """``n`` calls released together from ``n`` threads."""
    start = threading.Barrier(n)

    def one(i: int) -> httpx.Response:
        start.wait()
        return call(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def _raw(
    api: Stack, method: str, path: str, *, key: str | None, declared: int, content_type: str
) -> tuple[int, dict[str, str], bytes]:
    """Send a request's head declaring ``declared`` body bytes but none of them; return the
    answer the server gives without having read the body."""
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    head += [f"Content-Length: {declared}"] + ([f"Authorization: Bearer {key}"] if key else [])
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as s:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        return _response(s)


def _response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the response the server sends on ``s``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    raw_head, body = data.split(b"\r\n\r\n", 1)
    lines = raw_head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        body += s.recv(65536)
    return int(lines[0].split()[1]), headers, body


@contextmanager
def _stalled_uploads(
    api: Stack, who: Tenancy, n: int, sessions: sessionmaker[Session]
) -> Iterator[list[socket.socket]]:
    """``n`` dataset uploads that declare 100,000 bytes, send 1,000 and stall, each holding
    an upload slot (waited for in the database) until the block ends."""
    before = _slots(sessions, who)
    socks = []
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", api.port), timeout=10)
            socks.append(s)
            head = (
                f"POST /v1/datasets?filename=stalled{i}.npz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {who.key}\r\n"
                "Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
            )
            s.sendall(head.encode() + os.urandom(1000))
        _until(lambda: _slots(sessions, who) == before + n, f"{n} stalled uploads hold slots")
        yield socks
    finally:
        for s in socks:
            s.close()


def _answered(s: socket.socket) -> bool:
    """Whether the server answered or closed the connection."""
    s.setblocking(False)
    try:
        s.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    finally:
        s.setblocking(True)
    return True


def _slots(sessions: sessionmaker[Session], who: Tenancy) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).where(UploadSlot.tenant_id == who.id)) or 0


def _until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


# -- the request parsers and the cost model, on the real process -----------------------------

DEEP = "[" * 5_000 + "]" * 5_000  # past the interpreter's recursion limit
CIFAR = (3, 32, 32)
WRN_16_2 = parse_arch({"family": "wrn", "depth": 16, "width": 2})


def test_hostile_specs_get_a_4xx_from_the_real_process_and_leave_nothing(
    api: Stack, tenant: Callable[[], Tenancy], sessions: sessionmaker[Session]
) -> None:
    """Issue 11's classes 1, 2, 7 and 8 against the `kdserve api` process: each a 422 naming
    the field, none a 5xx, the unknown guided layer of the deepest resnet named quickly,
    and nothing stored."""
    who = tenant()
    layers = [{"path": p, "shape": list(s)} for p, s in layer_shapes(WRN_16_2, CIFAR, 10).items()]
    with sessions() as s, s.begin():
        dataset = create_dataset(s, who.id, input_shape=list(CIFAR), classes=list("0123456789"))
        teacher = create_teacher(
            s,
            who.id,
            arch=WRN_16_2.model_dump(mode="json"),
            input_shape=list(CIFAR),
            num_classes=10,
            layers=layers,
        )
        ids = {"dataset_id": str(dataset.id), "teacher_id": str(teacher.id)}
    fields = {"arch": json.dumps({"family": "mlp", "hidden": [8]}), "input_shape": "3,32,32"}
    uploads = [  # (query, what the 422 must say)
        ({**fields, "num_classes": str(2**63)}, "num_classes must be an integer from 2"),
        ({**fields, "num_classes": "10", "input_shape": DEEP}, "input_shape must be 1 to 4"),
        ({**fields, "num_classes": "10", "arch": '{"family": "mlp", "hidden": ' + DEEP + "}"},
         "nested deeper than 32 levels"),
    ]  # fmt: skip
    for query, needle in uploads:
        r = _post(api, "/v1/teachers", who, params=query, content=b"weights")
        assert r.status_code == 422, r.text
        assert needle in r.json()["detail"], r.text
    resnet = {"family": "resnet", "depth": 20}
    jobs = [  # (student, config, the field the 422 names)
        (resnet, {"method": "scratch", "weight_decay": 1e308}, "weight_decay"),
        (resnet, {"method": "scratch", "milestones": [0.5] * 100_000}, "milestones"),
        ({"family": "resnet", "depth": 600_002}, {"method": "scratch"}, "depth"),
        ({"family": "cnn", "layers": [{"type": "conv", "out": 2**70}, {"type": "flatten"},
                                      {"type": "linear"}]}, {"method": "scratch"}, "out"),
    ]  # fmt: skip
    for student, config, field in jobs:
        started = time.monotonic()
        body = {"dataset_id": ids["dataset_id"], "student": student, "config": config}
        r = _post(api, "/v1/jobs", who, json=body)
        assert r.status_code == 422, r.text
        assert field in r.text
        assert time.monotonic() - started < 5
    r = _post(
        api,
        "/v1/jobs",
        who,
        content=b'{"dataset_id": "%s", "student": {"family": "mlp", "hidden": [8]}, '
        b'"config": {"method": "scratch", "lr": Infinity}}' % ids["dataset_id"].encode(),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert "Infinity is not a JSON number" in r.text
    hint = {"teacher_layer": "block1.0", "student_layer": "layer9.0.conv"}
    deepest = {"family": "resnet", "depth": 1202}
    started = time.monotonic()
    r = _post(
        api,
        "/v1/jobs",
        who,
        json={**ids, "student": deepest, "config": {"method": "fitnet", "hint": hint}},
    )
    elapsed = time.monotonic() - started
    assert r.status_code == 422, r.text
    assert "no layer 'layer9.0.conv'; nearest valid paths" in r.text
    assert elapsed < 3, elapsed  # issue 11 measured 36 s at depth 600,002 before the bounds
    # An Idempotency-Key reused with another body is refused, not answered with the first job.
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    scratch = {
        "dataset_id": ids["dataset_id"],
        "student": {"family": "mlp", "hidden": [8]},
        "config": {"method": "scratch"},
    }
    first = _post(api, "/v1/jobs", who, json=scratch, headers=key)
    assert first.status_code == 202, first.text
    other = {**scratch, "config": {"method": "scratch", "epochs": 3}}
    again = _post(api, "/v1/jobs", who, json=other, headers=key)
    assert again.status_code == 422, again.text
    assert again.json()["code"] == "idempotency_key_reused"
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == who.id)) == 1
        kept = select(func.count()).select_from(Teacher).where(Teacher.tenant_id == who.id)
        assert s.scalar(kept) == 1  # the one this test made; no upload was stored
