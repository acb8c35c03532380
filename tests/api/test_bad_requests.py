"""Bad requests the API refuses itself (issue 4): the stored-bytes quota, wrong content types,
malformed or unknown input, impossible students and layer pairs, artifact names that try to
leave the job's folder, and another tenant's ids. Each is a problem+json naming what to fix,
and leaves no row, stored object or queued task behind."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, MutableMapping
from typing import Any

import anyio
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from store.blobs import LocalStore
from store.models import Artifact, AssetStatus, Blob, DatasetRecord, Job, JobStatus, Teacher, Tenant
from store.repositories.tenants import TenantRepository
from store.settings import Settings
from tests.api.conftest import REDIS_URL
from tests.api.factories import Tenancy, create_dataset, create_job, create_teacher, npz_bytes
from tests.api.test_bad_input import PROBLEM, assert_problem, stored_files

MLP = {"family": "mlp", "hidden": [8]}
RAW = "application/octet-stream"


def count(sessions: sessionmaker[Session], model: type[Any]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


# -- the stored-bytes quota -----------------------------------------------------------------


@pytest.fixture
def small(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    """An app whose tenants may store two 3,370-byte datasets and a bit."""
    quota = settings.model_copy(update={"max_stored_bytes_per_tenant": 2 * len(npz_bytes()) + 100})
    with TestClient(create_app(quota)) as c:
        yield c


def _raw(client: TestClient, who: Tenancy, content: Any, filename: str = "d.npz") -> Any:
    return client.post(
        f"/v1/datasets?filename={filename}",
        content=content,
        headers={**who.headers, "content-type": RAW},
    )


def test_an_upload_over_the_quota_is_413_naming_usage_and_what_to_do(
    small: TestClient, alice: Tenancy, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    first, second = npz_bytes(n=40), npz_bytes(n=41)
    assert _raw(small, alice, first).status_code == 201
    assert _raw(small, alice, second).status_code == 201
    limit = 2 * len(first) + 100
    used = len(first) + len(second)
    third = npz_bytes(n=42)
    chunked = iter([third[:1000], third[1000:]])  # no Content-Length: cut while streaming
    for r in (
        _raw(small, alice, third),  # refused from its Content-Length, before reading it
        small.post("/v1/datasets", headers=alice.headers, files={"file": ("d.npz", third)}),
        _raw(small, alice, chunked),
        small.post(
            "/v1/teachers?input_shape=1,8,8&num_classes=4",
            content=third,
            headers={**alice.headers, "content-type": RAW},
        ),
    ):
        body = assert_problem(r, 413, f"use {used:,} of its {limit:,} stored bytes", "delete")
        assert body["code"] == "quota_exceeded"
    assert count(sessions, DatasetRecord) == 2
    assert count(sessions, Teacher) == 0
    assert count(sessions, Blob) == 2
    assert len(stored_files(settings)) == 2


def test_the_quota_counts_shared_bytes_once_and_not_deleted_or_invalid_uploads(
    small: TestClient, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    a = npz_bytes(n=40)
    first = _raw(small, alice, a).json()
    assert _raw(small, alice, a).status_code == 201  # the same bytes: stored and counted once
    assert _raw(small, alice, npz_bytes(n=39)).status_code == 201
    assert _raw(small, alice, npz_bytes(n=38)).status_code == 413
    small.delete(f"/v1/datasets/{first['id']}", headers=alice.headers)  # still shared: counted
    assert _raw(small, alice, npz_bytes(n=38)).status_code == 413
    with sessions() as s, s.begin():
        s.execute(update(DatasetRecord).values(status=AssetStatus.invalid))
    assert _raw(small, alice, npz_bytes(n=38)).status_code == 201


def test_a_tenants_own_limit_overrides_the_setting(
    small: TestClient, alice: Tenancy, bob: Tenancy, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s, s.begin():
        s.execute(update(Tenant).where(Tenant.id == alice.id).values(max_stored_bytes=10**6))
        s.execute(update(Tenant).where(Tenant.id == bob.id).values(max_stored_bytes=1000))
    for n in (40, 41, 42):
        assert _raw(small, alice, npz_bytes(n=n)).status_code == 201
    assert_problem(_raw(small, bob, npz_bytes()), 413, "of its 1,000 stored bytes")


# -- uploads: size, type, malformed fields ------------------------------------------------


def test_a_teacher_over_the_size_limit_is_413_and_stores_nothing(
    alice: Tenancy, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    tiny = settings.model_copy(update={"max_upload_bytes": 1000})
    with TestClient(create_app(tiny)) as client:
        for r in (
            client.post(
                "/v1/teachers?input_shape=1,8,8&num_classes=4",
                content=iter([b"x" * 800, b"x" * 800]),  # chunked: no Content-Length to trust
                headers={**alice.headers, "content-type": RAW},
            ),
            client.post(
                "/v1/teachers",
                headers=alice.headers,
                files={"file": ("t.pt", b"x" * 5000)},
                data={"input_shape": "1,8,8", "num_classes": "4"},
            ),
        ):
            assert_problem(r, 413, "1,000-byte limit", "KDSERVE_MAX_UPLOAD_BYTES")
    assert count(sessions, Teacher) == count(sessions, Blob) == 0
    assert stored_files(settings) == []


@pytest.mark.parametrize(
    ("path", "headers", "content", "status", "needle"),
    [
        ("/v1/teachers", {"content-type": "text/plain"}, b"hi", 415, "multipart/form-data"),
        ("/v1/teachers", {"content-type": "application/json"}, b"{nope", 422, "from_job"),
        (
            "/v1/teachers",
            {"content-type": "application/json"},
            b'{"from_job": "' + str(uuid.UUID(int=1)).encode() + b'", "extra": 1}',
            422,
            "extra",
        ),
        (
            '/v1/teachers?input_shape=1,8,8&num_classes=4&arch={"family": "mlp"',
            {"content-type": RAW},
            b"w",
            422,
            "arch",
        ),
        (
            '/v1/teachers?input_shape=1,8,8&num_classes=4&arch={"family": "mlp", "hidden": [4], '
            '"colour": "red"}',
            {"content-type": RAW},
            b"w",
            422,
            "colour",
        ),
        ("/v1/teachers?input_shape=1,8,8&num_classes=four", {"content-type": RAW}, b"w", 422,
         "num_classes must be an integer"),
        ("/v1/datasets?filename=x.pkl", {"content-type": RAW}, b"w", 415, ".npz"),
        # NUL and control characters: Postgres refuses NUL in text, so they are refused first
        ("/v1/datasets?filename=a%00.npz", {"content-type": RAW}, b"w", 422,
         "filename must be at most 255 printable characters"),
        ("/v1/datasets?filename=a.npz&name=x%00y", {"content-type": RAW}, b"w", 422,
         "name must be at most 200 printable characters"),
        ("/v1/teachers?input_shape=1,8,8&num_classes=4&name=x%0Ay", {"content-type": RAW}, b"w",
         422, "name must be at most 200 printable characters"),
        ("/v1/datasets", {"content-type": "application/json"}, b"{}", 415, "?filename="),
    ],
)  # fmt: skip
def test_bad_upload_requests_are_refused_and_keep_nothing(
    client: TestClient,
    alice: Tenancy,
    settings: Settings,
    sessions: sessionmaker[Session],
    path: str,
    headers: dict[str, str],
    content: bytes,
    status: int,
    needle: str,
) -> None:
    r = client.post(path, content=content, headers={**alice.headers, **headers})
    assert_problem(r, status, needle)
    assert count(sessions, Teacher) == count(sessions, DatasetRecord) == count(sessions, Blob) == 0
    assert stored_files(settings) == []


# -- job submissions --------------------------------------------------------------------------


@pytest.fixture
def assets(sessions: sessionmaker[Session], alice: Tenancy) -> dict[str, str]:
    with sessions() as s, s.begin():
        return {
            "dataset_id": str(create_dataset(s, alice.id).id),  # 400 samples of 1x8x8, 4 classes
            "vectors": str(create_dataset(s, alice.id, input_shape=[64]).id),
            "teacher_id": str(
                create_teacher(
                    s,
                    alice.id,
                    arch={"family": "cnn", "layers": [{"type": "flatten"}, {"type": "linear"}]},
                    layers=[
                        {"path": "conv1", "shape": [4, 8, 8]},
                        {"path": "wide", "shape": [4, 6, 10]},
                        {"path": "fc", "shape": [4]},
                    ],
                ).id
            ),
        }


CONV_STUDENT = {
    "family": "cnn",
    "layers": [
        {"type": "conv", "out": 2, "k": 3, "pad": 1, "name": "c"},
        {"type": "flatten", "name": "f"},
        {"type": "linear", "name": "out"},
    ],
}


def _hint(teacher: str, student: str) -> dict[str, Any]:
    return {"method": "fitnet", "hint": {"teacher_layer": teacher, "student_layer": student}}


BAD_JOBS: list[tuple[str, dict[str, Any], str]] = [
    # what tests/api/test_jobs.py checks the message of, here checked to leave nothing
    ("temperature", {"config": {"method": "kd", "temperature": 0}}, "config.temperature"),
    ("alpha", {"config": {"method": "kd", "alpha": -0.1}}, "config.alpha"),
    ("lr", {"config": {"method": "kd", "lr": -1}}, "config.lr"),
    ("epochs", {"config": {"method": "kd", "epochs": 0}}, "config.epochs"),
    ("batch-size", {"config": {"method": "kd", "batch_size": 401}}, "batch_size 401 is larger"),
    ("hint-path", {"config": _hint("conv", "c")}, "nearest valid paths: conv1"),
    ("guided-path", {"config": _hint("conv1", "cc")}, "no layer 'cc'; nearest valid paths: c"),
    ("nul-in-name", {"name": "a\x00b"}, "name: String should match pattern"),
    ("name-too-long", {"name": "x" * 201}, "name: String should have at most 200 characters"),
    # unknown fields
    ("unknown-field", {"priority": 9}, "priority"),
    ("unknown-config-field", {"config": {"method": "kd", "temprature": 2}}, "config.temprature"),
    ("unknown-student-field", {"student": {"family": "mlp", "hidden": [4], "depth": 3}}, "depth"),
    # students that cannot take the data, layer pairs no regressor joins
    ("kernel-too-large", {"student": {"family": "cnn", "layers": [
        {"type": "conv", "out": 2, "k": 9}, {"type": "flatten"}, {"type": "linear"}]}},
     "student: layer 0 ('0', conv) cannot take input shape (1, 8, 8): its 9x9 window"),
    ("no-classifier", {"student": {"family": "cnn", "layers": [{"type": "conv", "out": 2}]}},
     "the last layer outputs shape (2, 6, 6), but the data has 4 classes"),
    ("linear-before-flatten", {"student": {"family": "cnn", "layers": [{"type": "linear"}]}},
     'needs a vector input, but receives shape (1, 8, 8): put {"type": "flatten"} before it'),
    ("image-net-on-vectors", {"dataset": "vectors", "student": {"family": "resnet", "depth": 8},
     "teacher_id": None, "config": {"method": "scratch"}},
     "student: family 'resnet' needs image input (C, H, W), but the data has shape (64,)"),
    ("image-layer-on-vector-layer", {"config": _hint("fc", "c")},
     "student layer 'c' (2, 8, 8) and teacher layer 'fc' (4,) do not fit: cannot regress"),
    ("larger-and-smaller", {"config": _hint("wide", "c")},
     "larger than hint map (4, 6, 10) in one direction and smaller in the other"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "needle"), [c[1:] for c in BAD_JOBS], ids=[c[0] for c in BAD_JOBS]
)
def test_a_bad_submission_is_422_naming_the_problem_and_queues_nothing(
    client: TestClient,
    alice: Tenancy,
    assets: dict[str, str],
    settings: Settings,
    sessions: sessionmaker[Session],
    change: dict[str, Any],
    needle: str,
) -> None:
    body: dict[str, Any] = {
        "teacher_id": assets["teacher_id"],
        "dataset_id": assets[change.pop("dataset", "dataset_id")],
        "student": CONV_STUDENT,
        "config": {"method": "kd"},
    } | change
    broker = redis.Redis.from_url(REDIS_URL)
    assert_problem(client.post("/v1/jobs", headers=alice.headers, json=body), 422, needle)
    assert count(sessions, Job) == 0
    assert broker.llen(settings.queue) == 0
    # the control: a good body is accepted and does queue a task
    fixed = {
        "teacher_id": assets["teacher_id"],
        "dataset_id": assets["dataset_id"],
        "student": CONV_STUDENT,
        "config": _hint("conv1", "c"),
    }
    assert client.post("/v1/jobs", headers=alice.headers, json=fixed).status_code == 202
    assert broker.llen(settings.queue) == 1


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'"a string"', b""])
def test_malformed_job_json_is_422_problem(
    client: TestClient, alice: Tenancy, sessions: sessionmaker[Session], content: bytes
) -> None:
    r = client.post(
        "/v1/jobs", content=content, headers={**alice.headers, "content-type": "application/json"}
    )
    body = assert_problem(r, 422)
    assert body["code"] == "invalid"
    assert body["errors"]
    assert count(sessions, Job) == 0


# -- artifact names ----------------------------------------------------------------------------


def _raw_get(
    client: TestClient, raw_path: bytes, who: Tenancy
) -> tuple[int, dict[str, str], bytes]:
    """GET with the path sent byte for byte (httpx would remove dot segments)."""
    from urllib.parse import unquote_to_bytes

    sent: list[MutableMapping[str, Any]] = []

    async def call() -> None:
        done = anyio.Event()
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()  # the client stays until the whole response is sent
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        await client.app(scope, receive, send)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": unquote_to_bytes(raw_path).decode("utf-8", "surrogateescape"),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {who.key}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    assert client.portal is not None
    client.portal.call(call)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


def test_artifact_names_cannot_leave_the_jobs_folder(
    client: TestClient, alice: Tenancy, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    store = LocalStore(settings.resolved_home / "storage")
    secret = b'{"secret": "of another job"}'
    with sessions() as s, s.begin():
        job = create_job(s, alice.id, status=JobStatus.succeeded)
        other = create_job(s, alice.id, status=JobStatus.succeeded)
        for owner, name, data in ((job, "report.json", b"{}"), (other, "secret.json", secret)):
            w = store.writer(f"tenants/{alice.id}/jobs/{owner.id}/artifacts/{name}")
            w.write(data)
            obj = w.commit()
            s.add(
                Artifact(job_id=owner.id, name=name, uri=obj.uri, size=obj.size, sha256=obj.sha256)
            )
        base = f"/v1/jobs/{job.id}/artifacts/"
        other_id = str(other.id)
    status, _, body = _raw_get(client, f"/v1/jobs/{other_id}/artifacts/secret.json".encode(), alice)
    assert (status, body) == (200, secret)  # the control: the file is there to be reached
    names = [
        "..",
        f"../../{other_id}/artifacts/secret.json",
        f"..%2F..%2F{other_id}%2Fartifacts%2Fsecret.json",
        f"%2e%2e%2f%2e%2e%2f{other_id}%2fartifacts%2fsecret.json",
        f"%252e%252e%252f{other_id}%252fartifacts%252fsecret.json",
        f"..%5C..%5C{other_id}%5Cartifacts%5Csecret.json",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        str(
            store.root / "tenants" / str(alice.id) / "jobs" / other_id / "artifacts" / "secret.json"
        ),
        "report.json%00.png",
    ]
    for name in names:
        status, headers, body = _raw_get(client, (base + name).encode(), alice)
        assert status in (404, 422), (name, status, body)
        assert headers["content-type"] == PROBLEM, name
        assert b"of another job" not in body, name  # the detail may echo the name
        assert b"root:" not in body, name


# -- tenants and keys --------------------------------------------------------------------------


def test_another_tenants_ids_are_refused_where_the_id_is_in_the_body(
    client: TestClient, alice: Tenancy, bob: Tenancy, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s, s.begin():
        theirs = {
            "teacher": str(create_teacher(s, alice.id).id),
            "dataset": str(create_dataset(s, alice.id).id),
            "job": str(create_job(s, alice.id, status=JobStatus.succeeded, idempotency_key="k").id),
        }
        mine = str(create_dataset(s, bob.id).id)
    r = client.post("/v1/teachers", headers=bob.headers, json={"from_job": theirs["job"]})
    assert_problem(r, 404, f"no job {theirs['job']}")
    base = {"dataset_id": mine, "student": MLP, "config": {"method": "kd"}}
    r = client.post("/v1/jobs", headers=bob.headers, json={**base, "teacher_id": theirs["teacher"]})
    assert_problem(r, 422, f"no teacher {theirs['teacher']}")
    r = client.post(
        "/v1/jobs",
        headers=bob.headers,
        json={**base, "config": {"method": "scratch"}, "val_dataset_id": theirs["dataset"]},
    )
    assert_problem(r, 422, f"val_dataset_id: no dataset {theirs['dataset']}")
    # The same Idempotency-Key as alice's job gives bob a job of his own, not hers.
    r = client.post(
        "/v1/jobs",
        headers={**bob.headers, "Idempotency-Key": "k"},
        json={**base, "config": {"method": "scratch"}},
    )
    assert r.status_code == 202, r.text
    assert r.json()["id"] != theirs["job"]
    for listing in ("/v1/teachers", "/v1/datasets", "/v1/jobs"):
        text = client.get(listing, headers=bob.headers).text
        assert not any(i in text for i in theirs.values()), listing
        assert mine not in client.get(listing, headers=alice.headers).text


def test_a_refused_key_gets_one_answer_whether_or_not_its_tenant_exists(
    client: TestClient, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    prefix = alice.key.split("_")[1]
    with sessions() as s, s.begin():
        revoked = TenantRepository(s).create_key(TenantRepository(s).get_or_create("carol"))
        TenantRepository(s).revoke_key(revoked)
    answers = set()
    for header in (
        None,
        "Bearer kds_000000000000_" + "x" * 43,  # no such tenant or key
        f"Bearer kds_{prefix}_" + "x" * 43,  # alice's prefix, wrong secret
        f"Bearer {revoked}",  # a real tenant's revoked key
        f"Bearer {alice.key}x",
        f"Basic {alice.key}",
    ):
        r = client.get("/v1/teachers", headers={"Authorization": header} if header else {})
        assert r.status_code == 401
        answers.add((r.text, r.headers["content-type"], r.headers["www-authenticate"]))
    assert len(answers) == 1, answers
    body = json.loads(next(iter(answers))[0])
    assert body["code"] == "unauthorized"
