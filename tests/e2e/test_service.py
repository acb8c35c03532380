"""End to end, as a user would: real uvicorn and Celery processes, real Postgres and Redis,
an S3 server on loopback; the client talks HTTP only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from client import KDServeAPIError, KDServeClient
from kdcore.data import Normalizer, load_dataset
from kdcore.evaluate import predict, score
from kdcore.export import load_student
from tests.e2e.stack import ARTIFACTS, STUDENT, TEACHER, Stack, upload_digits, wait_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def alice(stack: Stack) -> KDServeClient:
    return stack.new_tenant("alice")


@pytest.fixture(scope="module")
def data(alice: KDServeClient, digits: Path) -> dict[str, str]:
    return upload_digits(alice, digits)


@pytest.fixture(scope="module")
def finished(
    stack: Stack,
    alice: KDServeClient,
    data: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """Teacher by scratch → promoted → FitNets student; the whole user flow once."""
    teacher_job = alice.submit_job(
        student=TEACHER,
        name="teacher",
        config={"method": "scratch", "epochs": 6, "batch_size": 64},
        **data,
    )
    done = alice.wait_for("jobs", teacher_job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    teacher = alice.teacher_from_job(teacher_job["id"], name="digits teacher")
    teacher = alice.wait_for("teachers", teacher["id"], timeout=120)
    assert teacher["status"] == "ready", teacher
    job = alice.submit_job(
        student=STUDENT,
        teacher_id=teacher["id"],
        name="student",
        config={
            "method": "fitnet",
            "epochs": 4,
            "batch_size": 64,
            "temperature": 4,
            "alpha": 0.1,
            "hint": {"teacher_layer": "relu1", "student_layer": "relu2", "epochs": 2},
        },
        **data,
    )
    done = alice.wait_for("jobs", job["id"], timeout=300)
    assert done["status"] == "succeeded", (done, stack.log("worker"))
    out = tmp_path_factory.mktemp("download")
    alice.download_all(job["id"], out)
    return {"teacher": teacher, "job": done, "dir": out}


def test_user_flow_ends_with_a_student_that_scores_what_the_report_says(
    finished: dict[str, Any], alice: KDServeClient, digits: Path
) -> None:
    job, out = finished["job"], finished["dir"]
    assert job["progress"] == pytest.approx(1.0)
    assert job["attempts"] == 1
    assert {p.name for p in out.iterdir()} >= ARTIFACTS
    report = alice.job_report(job["id"])
    assert report == json.loads((out / "report.json").read_text())
    assert report["teacher"]["params"] > report["student"]["params"]
    student, meta = load_student(out)
    val = load_dataset(digits / "digits-test.npz")
    again = score(predict(student, val, Normalizer.from_dict(meta.preprocess)), val.y)
    assert again.accuracy == pytest.approx(report["student"]["accuracy"])
    assert again.accuracy > 0.8
    series = alice.job_metrics(job["id"])
    assert len(series["val_accuracy"]) == 4  # one point per KD epoch
    assert len(series["train_hint"]) == 2
    assert {layer["path"] for layer in finished["teacher"]["layers"]} >= {"relu1", "conv2"}


def test_another_tenant_sees_nothing(stack: Stack, finished: dict[str, Any]) -> None:
    bob = stack.client(stack.run("keys", "create", "--tenant", "bob"))
    job_id = finished["job"]["id"]
    assert bob.list_jobs() == []
    assert bob.list_teachers() == []
    for call in (
        lambda: bob.get_job(job_id),
        lambda: bob.list_artifacts(job_id),
        lambda: bob.job_report(job_id),
        lambda: bob.get_teacher(finished["teacher"]["id"]),
    ):
        with pytest.raises(KDServeAPIError) as info:
            call()
        assert info.value.status == 404


def test_the_same_job_again_reads_the_teacher_cache(
    stack: Stack, alice: KDServeClient, finished: dict[str, Any]
) -> None:
    """The first FitNets job built the teacher's logits and hint maps into the tenant's
    cache; the same job again reads both (the teacher does not run) and learns the same."""
    first = finished["job"]
    again = alice.submit_job(
        student=first["student"],
        teacher_id=first["teacher_id"],
        dataset_id=first["dataset_id"],
        val_dataset_id=first["val_dataset_id"],
        name="student again",
        config=first["config"],
    )
    done = alice.wait_for("jobs", again["id"], timeout=300)
    assert done["status"] == "succeeded", (done, stack.log("worker"))
    before, after = alice.job_report(first["id"]), alice.job_report(again["id"])
    assert (before["teacher_cache"]["status"], before["teacher_cache"]["hint"]["status"]) == (
        "miss",
        "miss",
    )
    assert (after["teacher_cache"]["status"], after["teacher_cache"]["hint"]["status"]) == (
        "hit",
        "hit",
    )
    assert after["teacher_cache"]["key"] == before["teacher_cache"]["key"]
    assert after["student"]["accuracy"] == pytest.approx(before["student"]["accuracy"])
    entries = alice.list_cache_entries()
    keys = {after["teacher_cache"]["key"], after["teacher_cache"]["hint"]["key"]}
    assert {e["key"] for e in entries} >= keys
    assert all(e["hits"] >= 1 for e in entries if e["key"] in keys)
    carol = stack.client(stack.run("keys", "create", "--tenant", "carol"))
    assert carol.list_cache_entries() == []


def _objects(stack: Stack, prefix: str) -> list[str]:
    env = stack.env
    s3 = boto3.client(
        "s3",
        endpoint_url=env["KDSERVE_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    bucket = env["KDSERVE_STORAGE_URL"].split("/")[2]
    found = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return [o["Key"] for o in found]


def test_cancel_stops_a_running_job_and_keeps_its_checkpoint(
    stack: Stack, alice: KDServeClient, data: dict[str, str], finished: dict[str, Any]
) -> None:
    job = alice.submit_job(
        student=STUDENT, config={"method": "scratch", "epochs": 500, "batch_size": 64}, **data
    )
    wait_job(
        alice,
        job["id"],
        lambda j: j["status"] == "running" and (j["epoch"] or 0) >= 2,
        timeout=240,
    )
    asked = time.monotonic()
    alice.cancel_job(job["id"])
    done = wait_job(alice, job["id"], lambda j: j["status"] != "running", timeout=30)
    assert done["status"] == "canceled"
    assert time.monotonic() - asked < 10
    assert alice.list_artifacts(job["id"]) == []
    assert any(
        k.endswith(f"jobs/{job['id']}/work/checkpoint.pt")
        for k in _objects(stack, "artifacts/tenants/")
    )


def test_sigkilled_worker_resumes_and_finishes_with_one_set_of_artifacts(
    stack: Stack, alice: KDServeClient, data: dict[str, str], finished: dict[str, Any]
) -> None:
    job = alice.submit_job(
        student=STUDENT, config={"method": "scratch", "epochs": 40, "batch_size": 64}, **data
    )
    wait_job(
        alice,
        job["id"],
        lambda j: j["status"] == "running" and (j["epoch"] or 0) >= 3,
        timeout=240,
    )
    stack.kill("worker")
    killed_at = alice.get_job(job["id"])["epoch"]
    stack.start_worker("worker2")
    done = wait_job(alice, job["id"], lambda j: j["status"] in ("succeeded", "failed"), timeout=300)
    assert done["status"] == "succeeded", (done, stack.log("worker2"))
    assert done["attempts"] == 2
    names = [a["name"] for a in alice.list_artifacts(job["id"])]
    assert sorted(names) == sorted(set(names))
    assert set(names) >= ARTIFACTS
    keys = _objects(stack, "artifacts/tenants/")
    assert len([k for k in keys if k.endswith(f"{job['id']}/artifacts/student.safetensors")]) == 1
    # It resumed: the epochs before the kill were not trained again from scratch.
    rows = [
        json.loads(line)
        for line in alice.download_artifact(job["id"], "metrics.jsonl", stack.home / "m.jsonl")
        .read_text()
        .splitlines()
    ]
    assert [r["epoch"] for r in rows] == list(range(1, 41))
    assert killed_at >= 3


# -- sweeps ------------------------------------------------------------------------------------


def test_a_sweep_runs_every_point_ranks_them_and_its_kd_points_share_one_cache_entry(
    stack: Stack,
    alice: KDServeClient,
    data: dict[str, str],
    finished: dict[str, Any],
    tmp_path: Path,
) -> None:
    """Two temperatures and a scratch point: every point succeeds, the leaderboard is sorted
    and topped by the best job, whose student downloads through the sweep's URLs; the KD
    points read one teacher-cache entry (temperature is not in its key)."""
    sweep = alice.submit_sweep(
        student=STUDENT,
        teacher_id=finished["teacher"]["id"],
        config={"method": "kd", "epochs": 2, "batch_size": 64},
        grid={"temperature": [2, 8]},
        scratch=True,
        name="temperatures",
        dataset_id=data["dataset_id"],
        val_dataset_id=data["val_dataset_id"],
    )
    done = alice.wait_sweep(sweep["id"], timeout=600, interval=0.5)
    assert done["status"] == "succeeded", (done, stack.log("worker"))
    assert [p["status"] for p in done["points"]] == ["succeeded"] * 3
    assert [p["overrides"] for p in done["points"]] == [
        {"temperature": 2},
        {"temperature": 8},
        {"method": "scratch", "seed": 0},
    ]
    board = done["leaderboard"]
    assert len(board) == 3
    assert [p["val_accuracy"] for p in board] == sorted(
        (p["val_accuracy"] for p in board), reverse=True
    )
    assert done["best_job_id"] == board[0]["job_id"]
    for point in done["points"]:  # each point's best epoch, from its recorded series
        series = alice.job_metrics(point["job_id"])["val_accuracy"]
        assert len(series) == 2
        assert point["val_accuracy"] == max(p["value"] for p in series)
        # ... is the epoch its job exported: the downloaded student is the best epoch's.
        report = alice.job_report(point["job_id"])
        assert report["exported"]["epoch"] == point["best_epoch"]
        assert report["exported"]["val_accuracy"] == pytest.approx(point["val_accuracy"])
        assert alice.get_job(point["job_id"])["metrics"]["exported_epoch"] == point["best_epoch"]

    paths = alice.download_sweep(sweep["id"], tmp_path / "best")
    assert {p.name for p in paths} >= ARTIFACTS
    best_report = alice.job_report(done["best_job_id"])
    assert json.loads((tmp_path / "best" / "report.json").read_text()) == best_report

    kd_points = [p["job_id"] for p in done["points"] if "temperature" in p["overrides"]]
    caches = [alice.job_report(job)["teacher_cache"] for job in kd_points]
    assert len({c["key"] for c in caches}) == 1, caches
    assert [c["status"] for c in caches].count("hit") >= 1, caches
    entry = next(e for e in alice.list_cache_entries() if e["key"] == caches[0]["key"])
    assert entry["hits"] >= 1
    assert alice.job_report(done["points"][2]["job_id"])["teacher"] is None  # scratch


def test_cancel_stops_a_sweeps_running_point_and_its_queued_ones(
    stack: Stack, alice: KDServeClient, data: dict[str, str], finished: dict[str, Any]
) -> None:
    sweep = alice.submit_sweep(
        student=STUDENT,
        config={"method": "scratch", "epochs": 500, "batch_size": 64},
        grid={"seed": [1, 2, 3]},
        dataset_id=data["dataset_id"],
        val_dataset_id=data["val_dataset_id"],
    )
    first = sweep["points"][0]["job_id"]
    wait_job(
        alice, first, lambda j: j["status"] == "running" and (j["epoch"] or 0) >= 1, timeout=240
    )
    asked = time.monotonic()
    canceled = alice.cancel_sweep(sweep["id"])
    assert [p["status"] for p in canceled["points"]] == ["running", "canceled", "canceled"]
    done = alice.wait_sweep(sweep["id"], timeout=30, interval=0.2)
    assert done["status"] == "canceled"
    assert time.monotonic() - asked < 15
    assert done["counts"]["canceled"] == 3
    assert all(alice.list_artifacts(p["job_id"]) == [] for p in done["points"])
    with pytest.raises(KDServeAPIError) as info:
        alice.cancel_sweep(sweep["id"])
    assert info.value.status == 409
