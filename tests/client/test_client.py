"""KDServeClient against the real API in-process (fast), and its retry and redirect rules
against scripted transports."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import KDServeAPIError, KDServeClient, KDServeConnectionError, default_api_key
from tests.client.factories import (
    DIGITS,
    Server,
    Wire,
    client_over,
    mark_dataset_ready,
    scratch_config,
    student_spec,
    succeed_with_artifacts,
    write_file,
)

# -- against the API -------------------------------------------------------------------------


def test_upload_teacher_round_trip(kd: KDServeClient, tmp_path: Path) -> None:
    weights = write_file(tmp_path / "teacher.safetensors", 3 * 1024 * 1024 + 17)
    arch = json.loads((DIGITS / "teacher.json").read_text())

    teacher = kd.upload_teacher(
        weights, arch=arch, input_shape=[1, 8, 8], num_classes=10, name="big one"
    )

    assert teacher["status"] == "validating"  # no worker runs in these tests
    assert teacher["name"] == "big one"
    assert teacher["input_shape"] == [1, 8, 8]
    assert teacher["num_classes"] == 10
    assert teacher["size"] == weights.stat().st_size
    assert teacher["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert _untimed(kd.get_teacher(teacher["id"])) == _untimed(teacher)
    assert [t["id"] for t in kd.list_teachers()] == [teacher["id"]]

    kd.delete_teacher(teacher["id"])
    with pytest.raises(KDServeAPIError) as exc:
        kd.get_teacher(teacher["id"])
    assert (exc.value.status, exc.value.code) == (404, "not_found")


def test_teacher_upload_problems_carry_code_and_detail(kd: KDServeClient, tmp_path: Path) -> None:
    weights = write_file(tmp_path / "t.safetensors", 100)
    with pytest.raises(KDServeAPIError) as exc:
        kd.upload_teacher(weights, input_shape="3,a", num_classes=10)
    assert (exc.value.status, exc.value.code) == (422, "invalid")
    assert "input_shape" in exc.value.detail


def test_upload_dataset_round_trip(kd: KDServeClient, tmp_path: Path) -> None:
    data = write_file(tmp_path / "train.npz", 4096)

    dataset = kd.upload_dataset(data, name="digits")

    assert dataset["status"] == "validating"
    assert dataset["filename"] == "train.npz"
    assert dataset["name"] == "digits"
    assert dataset["size"] == 4096
    assert kd.get_dataset(dataset["id"])["sha256"] == dataset["sha256"]


def test_teachers_datasets_and_jobs_by_kind(kd: KDServeClient, tmp_path: Path) -> None:
    dataset = kd.upload_dataset(write_file(tmp_path / "k.npz", 64, seed=3))

    assert kd.get_resource("datasets", dataset["id"])["sha256"] == dataset["sha256"]
    assert [d["id"] for d in kd.list_resources("datasets")] == [dataset["id"]]
    assert kd.list_resources("teachers") == kd.list_resources("jobs") == []
    kd.delete_upload("datasets", dataset["id"])
    assert kd.list_datasets() == []
    with pytest.raises(ValueError, match="kind must be teachers, datasets or jobs"):
        kd.get_resource("models", "x")  # type: ignore[arg-type]


def test_invalid_job_is_a_422_problem(kd: KDServeClient, tmp_path: Path) -> None:
    dataset = kd.upload_dataset(write_file(tmp_path / "d.npz", 64))
    with pytest.raises(KDServeAPIError) as exc:
        kd.submit_job(
            dataset_id=dataset["id"], student=student_spec(), config={"method": "distill-harder"}
        )
    assert exc.value.status == 422
    assert exc.value.code == "invalid"
    assert "config.method" in exc.value.detail
    assert exc.value.errors
    assert exc.value.errors[0]["loc"][:2] == ["config", "method"]


def test_job_on_a_dataset_still_validating_is_a_conflict(kd: KDServeClient, tmp_path: Path) -> None:
    dataset = kd.upload_dataset(write_file(tmp_path / "d.npz", 64))
    with pytest.raises(KDServeAPIError) as exc:
        kd.submit_job(dataset_id=dataset["id"], student=student_spec(), config=scratch_config())
    assert (exc.value.status, exc.value.code) == (409, "conflict")
    assert "still being validated" in exc.value.detail


def test_same_idempotency_key_returns_the_same_job(
    kd: KDServeClient, server: Server, tmp_path: Path
) -> None:
    dataset = _ready_dataset(kd, server, tmp_path)
    submit: dict[str, Any] = {
        "dataset_id": dataset,
        "student": student_spec(),
        "config": scratch_config(),
    }

    first = kd.submit_job(**submit, idempotency_key="nightly-42")
    again = kd.submit_job(**submit, idempotency_key="nightly-42")
    other = kd.submit_job(**submit)  # a fresh key: a new job

    assert first["status"] == "queued"
    assert again["id"] == first["id"]
    assert other["id"] != first["id"]
    assert {j["id"] for j in kd.list_jobs()} == {first["id"], other["id"]}
    assert [j["id"] for j in kd.list_jobs(status="succeeded")] == []


def test_a_lost_submit_response_is_retried_without_a_second_job(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    """The first POST reaches the API and commits, but its response is lost: the retry
    carries the same Idempotency-Key and gets the same job back."""
    wire = Wire(server, lose={"POST /v1/jobs": 1})
    kd = client_over(wire, api_key)
    dataset = _ready_dataset(kd, server, tmp_path)

    job = kd.submit_job(dataset_id=dataset, student=student_spec(), config=scratch_config())

    posts = [r for r in wire.requests if r.method == "POST" and r.url.path == "/v1/jobs"]
    assert len(posts) == 2
    assert posts[0].headers["idempotency-key"] == posts[1].headers["idempotency-key"]
    assert [j["id"] for j in kd.list_jobs()] == [job["id"]]


def test_lists_follow_cursors_newest_first(server: Server, api_key: str, tmp_path: Path) -> None:
    wire = Wire(server)
    kd = client_over(wire, api_key)
    uploaded = [
        kd.upload_dataset(write_file(tmp_path / f"{i}.npz", 64, seed=i))["id"] for i in range(5)
    ]

    listed = kd.list_datasets(page_size=2)

    assert [d["id"] for d in listed] == uploaded[::-1]
    pages = [r for r in wire.requests if r.method == "GET"]
    assert len(pages) == 3
    assert "cursor" not in pages[0].url.params
    assert all(p.url.params["cursor"] for p in pages[1:])


def test_without_a_key_the_api_answers_401(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDSERVE_API_KEY", raising=False)
    for key in ("", "kds_000000000000_not-a-real-key"):
        with pytest.raises(KDServeAPIError) as exc:
            KDServeClient(api_key=key, http=server.http).list_teachers()
        assert (exc.value.status, exc.value.code) == (401, "unauthorized")


def test_artifacts_download_and_report(kd: KDServeClient, server: Server, tmp_path: Path) -> None:
    dataset = _ready_dataset(kd, server, tmp_path)
    job = kd.submit_job(dataset_id=dataset, student=student_spec(), config=scratch_config())
    files = succeed_with_artifacts(server, job["id"])

    assert {a["name"] for a in kd.list_artifacts(job["id"])} == set(files)
    paths = kd.download_all(job["id"], tmp_path / "out")

    assert {p.name: p.read_bytes() for p in paths} == files
    assert not list((tmp_path / "out").glob("*.part"))
    assert kd.job_report(job["id"]) == json.loads(files["report.json"])
    assert kd.wait_for("jobs", job["id"], timeout=0)["status"] == "succeeded"
    with pytest.raises(KDServeAPIError) as exc:
        kd.download_artifact(job["id"], "../../etc/passwd", tmp_path / "x")
    assert exc.value.status == 404


def test_wait_for_returns_once_ready_and_times_out_otherwise(
    kd: KDServeClient, server: Server, tmp_path: Path
) -> None:
    dataset = kd.upload_dataset(write_file(tmp_path / "d.npz", 64))
    with pytest.raises(TimeoutError, match="still validating"):
        kd.wait_for("datasets", dataset["id"], timeout=0)
    mark_dataset_ready(server, dataset["id"])
    assert kd.wait_for("dataset", dataset["id"])["status"] == "ready"


# -- scripted transports -----------------------------------------------------------------------


def test_presigned_redirect_is_followed_without_the_api_key(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "api.example":
            url = "https://s3.example/bucket/student.onnx?X-Amz-Signature=abc"
            return httpx.Response(307, headers={"Location": url})
        return httpx.Response(200, content=b"onnx bytes")

    kd = _scripted(handler)
    path = kd.download_artifact("j1", "student.onnx", tmp_path)

    assert path.read_bytes() == b"onnx bytes"
    assert seen[0].headers["authorization"] == "Bearer kds_key"
    assert seen[1].url.host == "s3.example"
    assert "authorization" not in seen[1].headers


def test_503_is_retried_honouring_retry_after_capped() -> None:
    replies = iter(
        [
            httpx.Response(503, headers={"Retry-After": "5"}, json=_problem(503)),
            httpx.Response(503, headers={"Retry-After": "3600"}, json=_problem(503)),
            httpx.Response(200, json={"items": [], "next_cursor": None}),
        ]
    )
    kd = _scripted(lambda _r: next(replies), max_retry_wait_s=30)
    waits: list[float] = []
    kd._sleep = waits.append

    assert kd.list_jobs() == []
    assert waits == [5, 30]


def test_transport_errors_are_retried_then_reported() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    kd = _scripted(handler, retries=2)
    with pytest.raises(KDServeConnectionError, match="cannot reach kdserve at http://api.example"):
        kd.get_job("j1")
    assert len(calls) == 3


def test_uploads_and_other_writes_are_sent_once(tmp_path: Path) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        request.read()
        return httpx.Response(503, headers={"Retry-After": "1"}, json=_problem(503))

    kd = _scripted(handler)
    with pytest.raises(KDServeAPIError) as exc:
        kd.upload_dataset(write_file(tmp_path / "d.npz", 3 * 1024 * 1024))
    assert exc.value.code == "unavailable"
    with pytest.raises(KDServeAPIError):
        kd.cancel_job("j1")
    assert len(calls) == 2
    assert calls[0].headers["content-length"] == str(3 * 1024 * 1024)
    assert calls[0].headers["content-type"] == "application/octet-stream"


def test_a_429_is_not_retried_and_carries_retry_after() -> None:
    """A tenant cap can last as long as a job runs: the caller decides, told when and why."""
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        body = _problem(429) | {"code": "too_many_requests", "detail": "4 jobs running"}
        return httpx.Response(429, headers={"Retry-After": "30"}, json=body)

    kd = _scripted(handler)
    with pytest.raises(KDServeAPIError) as exc:
        kd.list_jobs()
    assert (exc.value.status, exc.value.retry_after, len(calls)) == (429, 30, 1)
    assert "4 jobs running" in str(exc.value)


def test_a_non_problem_error_body_still_raises(tmp_path: Path) -> None:
    kd = _scripted(lambda _r: httpx.Response(418, text="<html>teapot</html>"))
    with pytest.raises(KDServeAPIError) as exc:
        kd.get_dataset("d1")
    assert (exc.value.status, exc.value.code) == (418, "http_error")
    assert "teapot" in exc.value.detail


def test_key_defaults_to_env_then_the_file_kdserve_up_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KDSERVE_API_KEY", raising=False)
    monkeypatch.setenv("KDSERVE_HOME", str(tmp_path))
    assert default_api_key() is None
    (tmp_path / "api-key").write_text("kds_from_file\n")
    assert KDServeClient().api_key == "kds_from_file"
    monkeypatch.setenv("KDSERVE_API_KEY", "kds_from_env")
    monkeypatch.setenv("KDSERVE_URL", "http://elsewhere:9000/")
    kd = KDServeClient()
    assert (kd.api_key, kd.base_url) == ("kds_from_env", "http://elsewhere:9000")


# -- helpers ----------------------------------------------------------------------------------


def _ready_dataset(kd: KDServeClient, server: Server, tmp_path: Path) -> str:
    dataset_id: str = kd.upload_dataset(write_file(tmp_path / "ready.npz", 128, seed=99))["id"]
    mark_dataset_ready(server, dataset_id)
    return dataset_id


def _scripted(handler: Callable[[httpx.Request], httpx.Response], **kw: int) -> KDServeClient:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    kd = KDServeClient("http://api.example", "kds_key", http=http, **kw)
    kd._sleep = lambda _s: None
    return kd


def _untimed(obj: dict[str, object]) -> dict[str, object]:
    # SQLite hands timestamps back without their UTC offset (the API's concern, not ours).
    return {k: v for k, v in obj.items() if k not in ("created_at", "updated_at")}


def _problem(status: int) -> dict[str, object]:
    return {
        "title": "Service unavailable",
        "status": status,
        "detail": "retry shortly",
        "code": "unavailable",
    }
