from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from store.blobs import LocalStore
from store.models import Artifact, AssetStatus, JobStatus, MetricPoint
from store.settings import Settings
from tests.api.factories import Tenancy, create_dataset, create_job, create_teacher

MLP = {"family": "mlp", "hidden": [8]}


@pytest.fixture
def ready(sessions: sessionmaker[Session], alice: Tenancy) -> dict[str, str]:
    with sessions() as s, s.begin():
        return {
            "dataset_id": str(create_dataset(s, alice.id).id),
            "teacher_id": str(create_teacher(s, alice.id).id),
        }


def _submit(client: TestClient, who: Tenancy, **body: Any) -> Any:
    return client.post("/v1/jobs", headers=who.headers, json=body)


def test_submit_returns_202_with_location_and_is_idempotent(
    client: TestClient, alice: Tenancy, ready: dict[str, str]
) -> None:
    body = {
        "dataset_id": ready["dataset_id"],
        "student": MLP,
        "config": {"method": "scratch", "epochs": 2},
        "name": "first",
    }
    headers = {**alice.headers, "Idempotency-Key": "abc-123"}
    r = client.post("/v1/jobs", headers=headers, json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["config"]["epochs"] == 2
    assert job["config"]["batch_size"] == 128  # defaults are filled in and shown
    again = client.post("/v1/jobs", headers=headers, json=body)
    assert again.status_code == 202
    assert again.json()["id"] == job["id"]
    assert len(client.get("/v1/jobs", headers=alice.headers).json()["items"]) == 1


def test_an_idempotency_key_reused_with_another_body_is_refused(
    client: TestClient, alice: Tenancy, ready: dict[str, str]
) -> None:
    body = {"dataset_id": ready["dataset_id"], "student": MLP, "config": {"method": "scratch"}}
    headers = {**alice.headers, "Idempotency-Key": "k-1"}
    first = client.post("/v1/jobs", headers=headers, json=body)
    assert first.status_code == 202, first.text

    # The same request spelled differently (key order, a default written out) is a retry.
    same = {
        "config": {"epochs": 10, "method": "scratch"},
        "student": MLP,
        "dataset_id": ready["dataset_id"],
    }
    assert first.json()["config"]["epochs"] == 10
    retry = client.post("/v1/jobs", headers=headers, json=same)
    assert (retry.status_code, retry.json()["id"]) == (202, first.json()["id"])

    other = client.post(
        "/v1/jobs", headers=headers, json={**body, "config": {"method": "scratch", "epochs": 3}}
    )
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    problem = other.json()
    assert problem["code"] == "idempotency_key_reused"
    assert "'k-1' was already used for a different job request" in problem["detail"]
    assert "a new key" in problem["detail"]
    jobs = client.get("/v1/jobs", headers=alice.headers).json()["items"]
    assert [j["id"] for j in jobs] == [first.json()["id"]]
    assert jobs[0]["config"]["epochs"] == 10


@pytest.mark.parametrize(
    ("config", "expect"),
    [
        ({"method": "kd", "temperature": 0}, "config.temperature"),
        ({"method": "kd", "alpha": 1.5}, "config.alpha"),
        ({"method": "kd", "lr": 0}, "config.lr"),
        ({"method": "kd", "epochs": 0}, "config.epochs"),
        ({"method": "kd", "bogus": 1}, "config.bogus"),
        ({"method": "kd", "batch_size": 10_000}, "batch_size 10000 is larger"),
        (
            {"method": "fitnet", "hint": {"teacher_layer": "relu", "student_layer": "relu1"}},
            "nearest valid paths: relu1",
        ),
        (
            {"method": "fitnet", "hint": {"teacher_layer": "relu1", "student_layer": "fc9"}},
            "config.hint.student_layer: no layer 'fc9'",
        ),
    ],
)
def test_bad_configs_are_422_naming_the_problem(
    client: TestClient, alice: Tenancy, ready: dict[str, str], config: dict[str, Any], expect: str
) -> None:
    r = _submit(client, alice, student=MLP, config=config, **ready)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert expect in r.json()["detail"]


def test_student_spec_and_method_checks(
    client: TestClient, alice: Tenancy, ready: dict[str, str]
) -> None:
    r = _submit(
        client, alice, student={"family": "resnet", "depth": 9}, config={"method": "kd"}, **ready
    )
    assert r.status_code == 422
    assert "6n+2" in r.json()["detail"]
    r = _submit(client, alice, student=MLP, config={"method": "scratch"}, **ready)
    assert r.status_code == 422
    assert "without a teacher" in r.json()["detail"]
    r = _submit(client, alice, student=MLP, config={"method": "kd"}, dataset_id=ready["dataset_id"])
    assert r.status_code == 422
    assert "needs a teacher" in r.json()["detail"]
    r = client.post(
        "/v1/jobs",
        headers=alice.headers,
        content=b"{not json",
    )
    assert r.status_code == 422


def test_assets_not_ready_are_409_and_mismatches_422(
    client: TestClient, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s, s.begin():
        pending = create_teacher(s, alice.id, status=AssetStatus.validating).id
        other_shape = create_teacher(s, alice.id, input_shape=[3, 32, 32]).id
        data = create_dataset(s, alice.id).id
    r = _submit(
        client,
        alice,
        teacher_id=str(pending),
        dataset_id=str(data),
        student=MLP,
        config={"method": "kd"},
    )
    assert r.status_code == 409
    r = _submit(
        client,
        alice,
        teacher_id=str(other_shape),
        dataset_id=str(data),
        student=MLP,
        config={"method": "kd"},
    )
    assert r.status_code == 422
    assert "teacher takes input" in r.json()["detail"]


def test_running_job_limit_is_429(
    client: TestClient,
    alice: Tenancy,
    ready: dict[str, str],
    settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as s, s.begin():
        for _ in range(settings.max_running_jobs_per_tenant):
            create_job(s, alice.id, status=JobStatus.running)
    r = _submit(client, alice, student=MLP, config={"method": "kd"}, **ready)
    assert r.status_code == 429
    assert r.headers["retry-after"]


def test_list_filters_and_paginates(
    client: TestClient, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s, s.begin():
        ids = {str(create_job(s, alice.id).id) for _ in range(5)}
        create_job(s, alice.id, status=JobStatus.failed)
    seen: list[str] = []
    cursor = None
    while True:
        r = client.get(
            "/v1/jobs",
            headers=alice.headers,
            params={"status": "queued", "limit": 2, **({"cursor": cursor} if cursor else {})},
        )
        seen += [j["id"] for j in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5
    assert set(seen) == ids
    assert client.get("/v1/jobs?cursor=garbage", headers=alice.headers).status_code == 422


def test_cancel_queued_at_once_running_by_flag_final_409(
    client: TestClient, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s, s.begin():
        queued = create_job(s, alice.id).id
        running = create_job(s, alice.id, status=JobStatus.running).id
        done = create_job(s, alice.id, status=JobStatus.succeeded).id
    r = client.post(f"/v1/jobs/{queued}/cancel", headers=alice.headers)
    assert r.status_code == 202
    assert r.json()["status"] == "canceled"
    r = client.post(f"/v1/jobs/{running}/cancel", headers=alice.headers)
    assert r.json()["status"] == "running"
    assert r.json()["cancel_requested"] is True
    assert client.post(f"/v1/jobs/{done}/cancel", headers=alice.headers).status_code == 409


def test_metrics_artifacts_ranges_and_report(
    client: TestClient, alice: Tenancy, sessions: sessionmaker[Session], settings: Settings
) -> None:
    store = LocalStore(settings.resolved_home / "storage")
    report = json.dumps({"student": {"accuracy": 0.5}}).encode()
    weights = bytes(range(256)) * 4
    with sessions() as s, s.begin():
        job = create_job(s, alice.id, status=JobStatus.succeeded)
        for name, data in (("report.json", report), ("student.safetensors", weights)):
            w = store.writer(f"tenants/{alice.id}/jobs/{job.id}/artifacts/{name}")
            w.write(data)
            obj = w.commit()
            s.add(Artifact(job_id=job.id, name=name, uri=obj.uri, size=obj.size, sha256=obj.sha256))
        for step, value in enumerate([0.3, 0.5], start=1):
            s.add(MetricPoint(job_id=job.id, key="val_accuracy", step=step, value=value))
        job_id = job.id
    base = f"/v1/jobs/{job_id}"
    series = client.get(f"{base}/metrics", headers=alice.headers).json()["series"]
    assert [p["value"] for p in series["val_accuracy"]] == [0.3, 0.5]
    items = client.get(f"{base}/artifacts", headers=alice.headers).json()["items"]
    assert {a["name"] for a in items} == {"report.json", "student.safetensors"}
    whole = client.get(f"{base}/artifacts/student.safetensors", headers=alice.headers)
    assert whole.content == weights
    assert hashlib.sha256(whole.content).hexdigest() == next(
        a["sha256"] for a in items if a["name"] == "student.safetensors"
    )
    part = client.get(
        f"{base}/artifacts/student.safetensors", headers={**alice.headers, "Range": "bytes=10-19"}
    )
    assert part.status_code == 206
    assert part.content == weights[10:20]
    assert client.get(f"{base}/report", headers=alice.headers).json() == {
        "student": {"accuracy": 0.5}
    }
    for name in ("..%2F..%2Fetc%2Fpasswd", "%2E%2E", "%2E%2E%2Freport.json", "checkpoint.pt"):
        r = client.get(f"{base}/artifacts/{name}", headers=alice.headers)
        assert r.status_code == 404, name


def test_unknown_ids_are_404(client: TestClient, alice: Tenancy) -> None:
    for path in (f"/v1/jobs/{uuid.uuid4()}", "/v1/jobs/not-a-uuid", f"/v1/teachers/{uuid.uuid4()}"):
        r = client.get(path, headers=alice.headers)
        assert r.status_code == 404
        assert r.json()["code"] == "not_found"


def test_openapi_documents_the_job_contract(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/JobCreate"}
    schemas = doc["components"]["schemas"]
    fields = schemas["JobCreate"]["properties"]
    families = fields["student"]["discriminator"]["mapping"]
    assert set(families) >= {"cnn", "mlp", "resnet", "wrn"}
    assert schemas["ResNetSpec"]["properties"]["depth"]["default"] == 20
    assert fields["config"]["$ref"] == "#/components/schemas/DistillConfig"
    config = schemas["DistillConfig"]["properties"]
    assert {"method", "epochs", "temperature", "alpha", "hint", "augment"} <= set(config)
    assert config["method"]["enum"] == ["scratch", "kd", "fitnet"]


def test_an_auto_hint_is_resolved_at_submission_and_recorded(
    client: TestClient, alice: Tenancy, ready: dict[str, str]
) -> None:
    r = _submit(client, alice, student=MLP, config={"method": "fitnet"}, **ready)

    assert r.status_code == 202, r.text
    job = r.json()
    # The teacher lists fc1, relu1, head; the student mlp [8]: their last hidden layers.
    assert job["config"]["hint"] == {
        "teacher_layer": "relu1",
        "student_layer": "relu1",
        "epochs": 5,
        "lr": None,
    }
    assert job["choices"]["hint"]["teacher_layer"] == "relu1"
    assert "vector models" in job["choices"]["hint"]["reason"]
    assert client.get(f"/v1/jobs/{job['id']}", headers=alice.headers).json() == job


def test_auto_temperature_without_validation_data_is_422(
    client: TestClient, alice: Tenancy, ready: dict[str, str]
) -> None:
    config = {"method": "kd", "temperature": "auto", "val_split": 0}
    r = _submit(client, alice, student=MLP, config=config, **ready)

    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith('config.val_split: temperature/alpha "auto"')
    config["val_split"] = 0.2
    assert _submit(client, alice, student=MLP, config=config, **ready).status_code == 202


def test_a_jobs_warnings_are_shown(
    client: TestClient, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    note = "the onnx export was left out, it failed: RuntimeError: too far off"
    with sessions() as s, s.begin():
        job = create_job(s, alice.id, status=JobStatus.succeeded, warnings=[note]).id
        older = create_job(s, alice.id, status=JobStatus.succeeded).id  # NULL: before 0005
    assert client.get(f"/v1/jobs/{job}", headers=alice.headers).json()["warnings"] == [note]
    assert client.get(f"/v1/jobs/{older}", headers=alice.headers).json()["warnings"] == []
