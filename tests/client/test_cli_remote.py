"""The remote commands (`kdserve teachers|datasets|jobs ...`) against the API in-process."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cli import remote
from cli.main import app
from client import KDServeClient
from store.db import transaction
from store.keys import hash_key
from store.models import ApiKey, AssetStatus, CacheEntry, JobStatus, utcnow
from store.repositories.runs import RunRepository
from tests.client.factories import (
    DIGITS,
    Server,
    mark_dataset_ready,
    mark_teacher,
    scratch_config,
    student_spec,
    succeed_with_artifacts,
    update_job,
    write_file,
)

runner = CliRunner()


@pytest.fixture(autouse=True)
def _in_process(monkeypatch: pytest.MonkeyPatch, server: Server, api_key: str) -> None:
    """Commands reach the in-process API; --api-key still wins over the test's key."""

    def make_client(url: str | None, key: str | None) -> KDServeClient:
        kd = KDServeClient(api_key=api_key if key is None else key, http=server.http)
        kd._sleep = lambda _s: None
        return kd

    monkeypatch.setattr(remote, "make_client", make_client)
    monkeypatch.delenv("KDSERVE_API_KEY", raising=False)
    monkeypatch.delenv("KDSERVE_URL", raising=False)


def test_datasets_upload_list_get(tmp_path: Path) -> None:
    data = write_file(tmp_path / "train.npz", 2048)

    up = runner.invoke(app, ["datasets", "upload", str(data), "--name", "digits"])
    assert up.exit_code == 0, up.output
    dataset = json.loads(up.stdout)
    assert (dataset["status"], dataset["name"]) == ("validating", "digits")

    listed = runner.invoke(app, ["datasets", "list", "--json"])
    assert [d["id"] for d in json.loads(listed.stdout)] == [dataset["id"]]
    table = runner.invoke(app, ["datasets", "list"])
    assert table.exit_code == 0
    assert "digits" in table.stdout
    got = runner.invoke(app, ["datasets", "get", dataset["id"]])
    assert json.loads(got.stdout)["sha256"] == dataset["sha256"]


def test_teachers_list_and_delete(tmp_path: Path) -> None:
    weights = write_file(tmp_path / "t.safetensors", 512, seed=5)
    args = ["teachers", "upload", str(weights), "--input-shape", "1,8,8", "--classes", "10"]
    up = runner.invoke(app, [*args, "--arch", str(DIGITS / "teacher.json"), "--name", "wide"])
    assert up.exit_code == 0, up.output
    teacher = json.loads(up.stdout)["id"]

    table = runner.invoke(app, ["teachers", "list"])
    assert table.exit_code == 0, table.output
    assert teacher in table.stdout
    assert "wide" in table.stdout
    assert "validating" in table.stdout

    deleted = runner.invoke(app, ["teachers", "delete", teacher])
    assert deleted.exit_code == 0, deleted.output
    assert f"deleted teacher {teacher}" in deleted.stderr
    assert json.loads(runner.invoke(app, ["teachers", "list", "--json"]).stdout) == []
    gone = runner.invoke(app, ["teachers", "get", teacher])
    assert gone.exit_code == 2
    assert f"no teacher {teacher}" in gone.stderr
    assert "HTTP 404 not_found" in gone.stderr


def test_teachers_upload_wait_reports_an_invalid_teacher(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = write_file(tmp_path / "t.safetensors", 512)
    real_wait = KDServeClient.wait_for

    def worker_finds_it_broken(self: KDServeClient, kind: str, id_: str, *a: Any, **kw: Any) -> Any:
        mark_teacher(server, id_, AssetStatus.invalid, "missing tensor conv1.weight")
        return real_wait(self, kind, id_, *a, **kw)

    monkeypatch.setattr(KDServeClient, "wait_for", worker_finds_it_broken)
    args = ["teachers", "upload", str(weights), "--input-shape", "1,8,8", "--classes", "10"]
    result = runner.invoke(app, [*args, "--arch", str(DIGITS / "teacher.json"), "--wait"])

    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == "invalid"
    assert "missing tensor conv1.weight" in result.stderr


def test_jobs_submit_prints_the_job_then_its_id(tmp_path: Path, server: Server) -> None:
    dataset = _ready_dataset(tmp_path, server)
    student, config = (
        _json_file(tmp_path, "s.json", student_spec()),
        _json_file(tmp_path, "c.json", scratch_config()),
    )
    args = ["jobs", "submit", "--dataset", dataset, "--student", student, "--config", config]

    result = runner.invoke(app, [*args, "--name", "first"])
    assert result.exit_code == 0, result.output
    *body, last = result.stdout.strip().splitlines()
    job = json.loads("\n".join(body))
    assert (job["name"], job["status"], last) == ("first", "queued", job["id"])

    quiet = runner.invoke(app, [*args, "--quiet"])
    assert quiet.exit_code == 0
    assert len(quiet.stdout.split()) == 1
    assert quiet.stdout.strip() != job["id"]

    listed = runner.invoke(app, ["jobs", "list", "--status", "queued", "--json"])
    assert len(json.loads(listed.stdout)) == 2


def test_a_refused_submit_prints_the_problem_and_exits_2(tmp_path: Path, server: Server) -> None:
    dataset = _ready_dataset(tmp_path, server)
    student = _json_file(tmp_path, "s.json", student_spec())
    config = _json_file(tmp_path, "c.json", {"method": "kd"})
    args = ["jobs", "submit", "--dataset", dataset, "--student", student, "--config", config]

    result = runner.invoke(app, args)

    assert result.exit_code == 2
    assert "teacher_id: method 'kd' needs a teacher" in result.stderr
    assert "HTTP 422 invalid" in result.stderr
    assert "Traceback" not in result.output


def test_jobs_watch_prints_a_line_per_change_until_success(tmp_path: Path, server: Server) -> None:
    job = _submitted_job(tmp_path, server)
    jid, now = uuid.UUID(job), utcnow()
    with transaction(server.sessions) as s:  # what a worker writes, events included
        runs = RunRepository(s)
        assert runs.claim(jid, lease="l", now=now, stale_before=now, max_attempts=3)
        for epoch, metrics in enumerate(
            [{"loss": 1.5, "lr": 0.05}, {"loss": 0.75, "val_acc": 0.8}], start=1
        ):
            progress = {"stage": "train", "epoch": epoch, "progress": epoch / 4}
            runs.record_epoch(jid, lease="l", now=now, step=epoch, points=metrics, **progress)
        runs.record_epoch(  # the same again (a resumed epoch): no line
            jid, lease="l", now=now, step=2, points={"val_acc": 0.8}, **progress
        )
        metrics = {"loss": 0.75, "val_acc": 0.8}
        runs.succeed(jid, lease="l", now=now, artifacts=[], metrics=metrics)

    result = runner.invoke(app, ["jobs", "watch", job, "--interval", "0"])

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "queued 0%",
        "starting 0%",
        "train epoch 1 25% loss=1.5",
        "train epoch 2 50% loss=0.75 val_acc=0.8",
        "succeeded 100% loss=0.75 val_acc=0.8",
    ]


def test_jobs_watch_follows_a_job_without_a_final_event(tmp_path: Path, server: Server) -> None:
    """A job whose log ends early (older than the event log) is read once more when the
    stream ends, and watch ends with it."""
    job = _submitted_job(tmp_path, server)
    update_job(server, job, status=JobStatus.succeeded, progress=1.0, metrics={"loss": 0.5})

    result = runner.invoke(app, ["jobs", "watch", job])

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["queued 0%", "succeeded 100% loss=0.5"]


def test_jobs_watch_exits_1_with_the_error_of_a_failed_job(tmp_path: Path, server: Server) -> None:
    job = _submitted_job(tmp_path, server)
    update_job(
        server, job, status=JobStatus.failed, error_code="diverged", error_message="loss is NaN"
    )

    result = runner.invoke(app, ["jobs", "watch", job, "--interval", "0"])

    assert result.exit_code == 1
    assert "diverged: loss is NaN" in result.stderr


def test_jobs_download_writes_artifacts_and_prints_the_report(
    tmp_path: Path, server: Server
) -> None:
    job = _submitted_job(tmp_path, server)
    files = succeed_with_artifacts(server, job)

    result = runner.invoke(app, ["jobs", "download", job, "--out", str(tmp_path / "out")])

    assert result.exit_code == 0, result.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files
    assert "report (scratch, 100 validation samples)" in result.stdout
    assert "0.9000" in result.stdout
    report = runner.invoke(app, ["jobs", "report", job, "--json"])
    assert json.loads(report.stdout)["method"] == "scratch"


def test_cancel_a_queued_job_then_cancel_again_is_a_conflict(
    tmp_path: Path, server: Server
) -> None:
    job = _submitted_job(tmp_path, server)

    first = runner.invoke(app, ["jobs", "cancel", job])
    again = runner.invoke(app, ["jobs", "cancel", job])

    assert first.exit_code == 0
    assert json.loads(first.stdout)["status"] == "canceled"
    assert again.exit_code == 2
    assert "HTTP 409 conflict" in again.stderr


def test_a_wrong_key_exits_2_with_a_hint() -> None:
    result = runner.invoke(app, ["teachers", "list", "--api-key", "kds_000000000000_nope"])
    assert result.exit_code == 2
    assert "HTTP 401 unauthorized" in result.stderr
    assert "KDSERVE_API_KEY" in result.stderr


def test_an_unreachable_server_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "make_client", lambda url, key: KDServeClient(url, key))
    result = runner.invoke(app, ["jobs", "cancel", "j1", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "cannot reach kdserve at http://127.0.0.1:9" in result.stderr


def test_every_remote_command_has_help() -> None:
    for group, commands in {
        "teachers": ["upload", "promote", "list", "get", "delete"],
        "datasets": ["upload", "list", "get", "delete"],
        "jobs": ["submit", "watch", "get", "list", "cancel", "download", "report"],
    }.items():
        for command in commands:
            result = runner.invoke(app, [group, command, "--help"])
            assert result.exit_code == 0, (group, command)
            assert "--url" in result.stdout


# -- helpers -----------------------------------------------------------------------------------


def _ready_dataset(tmp_path: Path, server: Server) -> str:
    result = runner.invoke(app, ["datasets", "upload", str(write_file(tmp_path / "r.npz", 256))])
    dataset_id: str = json.loads(result.stdout)["id"]
    mark_dataset_ready(server, dataset_id)
    return dataset_id


def _submitted_job(tmp_path: Path, server: Server) -> str:
    dataset = _ready_dataset(tmp_path, server)
    student = _json_file(tmp_path, "s.json", student_spec())
    config = _json_file(tmp_path, "c.json", scratch_config())
    args = ["jobs", "submit", "--dataset", dataset, "--student", student, "--config", config]
    result = runner.invoke(app, [*args, "-q"])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def _json_file(tmp_path: Path, name: str, obj: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


def test_cache_list_and_delete(server: Server, api_key: str) -> None:
    with transaction(server.sessions) as session:
        tenant = session.scalar(
            select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(api_key))
        )
        writer = server.store.writer(f"tenants/{tenant}/cache/{'ab' * 32}.safetensors")
        writer.write(b"x" * 2048)
        obj = writer.commit()
        entry = CacheEntry(
            tenant_id=tenant, key="ab" * 32, uri=obj.uri, size=obj.size, sha256=obj.sha256
        )
        session.add(entry)
        session.flush()
        entry_id = str(entry.id)

    table = runner.invoke(app, ["cache", "list"])
    assert table.exit_code == 0, table.output
    assert entry_id in table.stdout
    assert "abababababababab" in table.stdout
    listed = json.loads(runner.invoke(app, ["cache", "list", "--json"]).stdout)
    assert [(e["id"], e["size"], e["hits"]) for e in listed] == [(entry_id, 2048, 0)]

    deleted = runner.invoke(app, ["cache", "delete", entry_id])
    assert deleted.exit_code == 0, deleted.output
    assert f"deleted cache entry {entry_id}" in deleted.stderr
    assert json.loads(runner.invoke(app, ["cache", "list", "--json"]).stdout) == []
    assert not server.store.exists(obj.uri)
    again = runner.invoke(app, ["cache", "delete", entry_id])
    assert again.exit_code == 2
    assert "HTTP 404" in again.stderr
