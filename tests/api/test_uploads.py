from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from store.models import Artifact, Blob, DatasetRecord, JobStatus
from store.settings import Settings
from tests.api.factories import Tenancy, create_job, npz_bytes

ROOT = Path(__file__).resolve().parents[2]


def _stored_files(settings: Settings) -> list[Path]:
    root = settings.resolved_home / "storage"
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".readyz")]


def test_dataset_upload_multipart_and_raw_share_one_blob(
    client: TestClient, alice: Tenancy, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    data = npz_bytes()
    a = client.post("/v1/datasets", headers=alice.headers, files={"file": ("a.npz", data)})
    assert a.status_code == 201, a.text
    assert a.json()["status"] == "validating"
    b = client.post(
        "/v1/datasets?filename=b.npz&name=again",
        content=data,
        headers={**alice.headers, "content-type": "application/octet-stream"},
    )
    assert b.status_code == 201, b.text
    assert b.json()["sha256"] == a.json()["sha256"]
    assert b.json()["name"] == "again"
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Blob)) == 1
    assert len(_stored_files(settings)) == 1  # the duplicate's bytes were removed


def test_upload_over_the_limit_is_413_and_leaves_nothing(
    alice: Tenancy, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    small = settings.model_copy(update={"max_upload_bytes": 1000})
    with TestClient(create_app(small)) as client:
        r = client.post(
            "/v1/datasets?filename=big.npz",
            content=b"x" * 5000,
            headers={**alice.headers, "content-type": "application/octet-stream"},
        )
        assert r.status_code == 413
        assert r.headers["content-type"] == "application/problem+json"
        assert "limit" in r.json()["detail"]
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(DatasetRecord)) == 0
    assert _stored_files(settings) == []


def test_wrong_content_type_and_file_kind_are_415(client: TestClient, alice: Tenancy) -> None:
    r = client.post(
        "/v1/datasets", headers={**alice.headers, "content-type": "text/plain"}, content=b"hello"
    )
    assert r.status_code == 415
    r = client.post("/v1/datasets", headers=alice.headers, files={"file": ("x.csv", b"1,2")})
    assert r.status_code == 415
    assert ".npz" in r.json()["detail"]


def test_empty_upload_is_422(client: TestClient, alice: Tenancy) -> None:
    r = client.post(
        "/v1/datasets?filename=e.npz",
        content=b"",
        headers={**alice.headers, "content-type": "application/octet-stream"},
    )
    assert r.status_code == 422


def test_teacher_upload_checks_arch_and_shape(client: TestClient, alice: Tenancy) -> None:
    ok = client.post(
        "/v1/teachers",
        headers=alice.headers,
        files={"file": ("t.pt", b"abc")},
        data={
            "arch": json.dumps({"family": "mlp", "hidden": [8]}),
            "input_shape": "1,8,8",
            "num_classes": "4",
            "name": "mine",
        },
    )
    assert ok.status_code == 201, ok.text
    body = ok.json()
    assert body["status"] == "validating"
    assert body["input_shape"] == [1, 8, 8]
    assert body["layers"] is None
    bad = client.post(
        "/v1/teachers",
        headers=alice.headers,
        files={"file": ("t.pt", b"abc")},
        data={"arch": json.dumps({"family": "vit"}), "input_shape": "1,8,8", "num_classes": "4"},
    )
    assert bad.status_code == 422
    assert "valid families" in bad.json()["detail"]
    shape = client.post(
        "/v1/teachers?input_shape=0,3&num_classes=4",
        content=b"abc",
        headers={**alice.headers, "content-type": "application/octet-stream"},
    )
    assert shape.status_code == 422
    assert "input_shape" in shape.json()["detail"]


def test_promoting_an_unfinished_job_is_409(
    client: TestClient, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    from tests.api.factories import create_job

    with sessions() as s, s.begin():
        job_id = create_job(s, alice.id).id
    r = client.post("/v1/teachers", headers=alice.headers, json={"from_job": str(job_id)})
    assert r.status_code == 409
    assert "succeeded" in r.json()["detail"]


def test_delete_hides_a_dataset(client: TestClient, alice: Tenancy) -> None:
    r = client.post("/v1/datasets", headers=alice.headers, files={"file": ("a.npz", npz_bytes())})
    ds = r.json()["id"]
    assert client.delete(f"/v1/datasets/{ds}", headers=alice.headers).status_code == 204
    assert client.get(f"/v1/datasets/{ds}", headers=alice.headers).status_code == 404


# What each kind needs besides its file, as query parameters of a raw upload.
RAW_UPLOADS = {"teachers": "input_shape=1,8,8&num_classes=4", "datasets": "filename=d.npz"}


@pytest.mark.parametrize("kind", ["teachers", "datasets"])
def test_teachers_and_datasets_share_one_lifecycle(
    client: TestClient, alice: Tenancy, bob: Tenancy, kind: str
) -> None:
    what = kind[:-1]

    def upload(content: bytes) -> dict[str, Any]:
        r = client.post(
            f"/v1/{kind}?{RAW_UPLOADS[kind]}",
            content=content,
            headers={**alice.headers, "content-type": "application/octet-stream"},
        )
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "validating"
        body: dict[str, Any] = r.json()
        return body

    first, second = upload(b"first file"), upload(b"second file")
    page = client.get(f"/v1/{kind}?limit=1", headers=alice.headers).json()
    assert [row["id"] for row in page["items"]] == [second["id"]]  # newest first
    rest = client.get(f"/v1/{kind}?cursor={page['next_cursor']}", headers=alice.headers).json()
    assert ([row["id"] for row in rest["items"]], rest["next_cursor"]) == ([first["id"]], None)
    got = client.get(f"/v1/{kind}/{first['id']}", headers=alice.headers).json()
    assert _untimed(got) == _untimed(first)
    assert client.get(f"/v1/{kind}", headers=bob.headers).json()["items"] == []

    theirs = client.get(f"/v1/{kind}/{first['id']}", headers=bob.headers)
    assert (theirs.status_code, theirs.json()["detail"]) == (404, f"no {what} {first['id']}")
    malformed = client.delete(f"/v1/{kind}/nope", headers=alice.headers)
    assert (malformed.status_code, malformed.json()["detail"]) == (404, f"no {what} 'nope'")

    assert client.delete(f"/v1/{kind}/{first['id']}", headers=alice.headers).status_code == 204
    assert client.get(f"/v1/{kind}/{first['id']}", headers=alice.headers).status_code == 404
    assert client.delete(f"/v1/{kind}/{first['id']}", headers=alice.headers).status_code == 404
    listed = client.get(f"/v1/{kind}", headers=alice.headers).json()["items"]
    assert [row["id"] for row in listed] == [second["id"]]


def test_promoting_a_finished_job_shares_its_exported_student(
    client: TestClient, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    sha = "ab" * 32
    with sessions() as s, s.begin():
        job = create_job(s, alice.id, status=JobStatus.succeeded, name="small one")
        s.add(
            Artifact(
                job_id=job.id, name="student.safetensors", uri="file:///job/x", size=10, sha256=sha
            )
        )
        job_id, student = job.id, job.student

    first = client.post("/v1/teachers", headers=alice.headers, json={"from_job": str(job_id)})
    again = client.post(
        "/v1/teachers", headers=alice.headers, json={"from_job": str(job_id), "name": "again"}
    )

    assert first.status_code == again.status_code == 201, first.text
    body = first.json()
    assert (body["status"], body["name"], body["source_job_id"]) == (
        "validating",
        "small one",
        str(job_id),
    )
    assert (body["arch"], body["input_shape"], body["num_classes"]) == (student, [1, 8, 8], 4)
    assert (body["size"], body["sha256"]) == (10, sha)
    assert again.json()["name"] == "again"
    with sessions() as s:  # both teachers share the job's file, which stays where it is
        blobs = s.scalars(select(Blob).where(Blob.sha256 == sha)).all()
        assert [b.uri for b in blobs] == ["file:///job/x"]


def _untimed(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("created_at", "updated_at")}


def test_promoting_a_job_whose_dataset_was_deleted_still_works(
    client: TestClient, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s, s.begin():
        job = create_job(s, alice.id, status=JobStatus.succeeded)
        student = {"name": "student.safetensors", "uri": "file:///j", "size": 1, "sha256": "c" * 64}
        s.add(Artifact(job_id=job.id, **student))
        job_id, dataset_id = job.id, job.dataset_id
    deleted = client.delete(f"/v1/datasets/{dataset_id}", headers=alice.headers)
    assert deleted.status_code == 204, deleted.text

    # The deleted dataset's row keeps what the teacher needs: the student's input and classes.
    r = client.post("/v1/teachers", headers=alice.headers, json={"from_job": str(job_id)})
    assert r.status_code == 201, r.text
    assert (r.json()["input_shape"], r.json()["num_classes"]) == ([1, 8, 8], 4)
    assert client.get(f"/v1/datasets/{dataset_id}", headers=alice.headers).status_code == 404

    with sessions() as s, s.begin():
        bare = create_job(s, alice.id, status=JobStatus.succeeded).id
    r = client.post("/v1/teachers", headers=alice.headers, json={"from_job": str(bare)})
    assert r.status_code == 409
    assert r.json()["detail"] == f"job {bare} has no exported student to promote"


# A writer in a process of its own: it starts an upload, says so, and waits to be told to
# finish it (or is killed first).
_WRITER = """
import sys
from pathlib import Path
from store.blobs import LocalStore
writer = LocalStore(Path(sys.argv[1])).writer(sys.argv[2])
writer.write(b"x" * 1000)
print("writing", flush=True)
sys.stdin.read()
writer.write(b"y")
writer.commit()
"""


def test_the_api_start_sweeps_a_killed_uploads_partial_file_but_not_a_live_one(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    root = settings.resolved_home / "storage"
    writers = {
        name: subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(root), f"tenants/t/blobs/{name}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        for name in ("killed", "live")
    }
    try:
        for proc in writers.values():
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"writing\n"
        writers["killed"].kill()
        writers["killed"].wait(10)
        assert len(list(root.rglob(".*.partial"))) == 2

        with TestClient(create_app(settings)):  # the start sweeps: at once, though fresh
            left = [p.name for p in root.rglob(".*.partial")]
        assert len(left) == 1
        assert left[0].startswith(".live.")

        writers["live"].communicate(b"", timeout=30)  # the live upload finishes unharmed
        assert writers["live"].returncode == 0
        assert (root / "tenants/t/blobs/live").read_bytes() == b"x" * 1000 + b"y"
        assert not list(root.rglob(".*.partial"))
    finally:
        for proc in writers.values():
            proc.kill()
            proc.wait(10)
