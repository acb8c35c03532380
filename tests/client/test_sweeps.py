"""KDServeClient's sweep methods against the real API in-process (SQLite home, no worker:
the rows a worker would write are written here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from client import KDServeAPIError, KDServeClient
from store.models import JobStatus
from tests.client.factories import (
    Server,
    Wire,
    client_over,
    mark_dataset_ready,
    record_epochs,
    scratch_config,
    student_spec,
    succeed_with_artifacts,
    update_job,
    write_file,
)


def _sweep_args(kd: KDServeClient, server: Server, tmp_path: Path, **grid: Any) -> dict[str, Any]:
    dataset = kd.upload_dataset(write_file(tmp_path / "d.npz", 64))["id"]
    mark_dataset_ready(server, dataset)
    return {
        "dataset_id": dataset,
        "student": student_spec(),
        "config": scratch_config(),
        "grid": grid or {"lr": [0.01, 0.1]},
    }


def test_submit_get_list_wait_and_download_the_best(
    kd: KDServeClient, server: Server, tmp_path: Path
) -> None:
    args = _sweep_args(kd, server, tmp_path, lr=[0.01, 0.1], seed=[0, 1])

    sweep = kd.submit_sweep(**args, name="lrs", idempotency_key="sweep-7")

    assert sweep["status"] == "queued"
    assert [p["overrides"] for p in sweep["points"]] == [
        {"lr": 0.01, "seed": 0},
        {"lr": 0.01, "seed": 1},
        {"lr": 0.1, "seed": 0},
        {"lr": 0.1, "seed": 1},
    ]
    assert kd.submit_sweep(**args, name="lrs", idempotency_key="sweep-7")["id"] == sweep["id"]
    assert [s["id"] for s in kd.list_sweeps(page_size=1)] == [sweep["id"]]
    assert kd.get_sweep(sweep["id"])["name"] == "lrs"
    with pytest.raises(TimeoutError, match=r"still queued after 0 s \(4 queued\)"):
        kd.wait_sweep(sweep["id"], timeout=0)
    with pytest.raises(KDServeAPIError) as exc:
        kd.list_sweep_artifacts(sweep["id"])
    assert exc.value.status == 404
    assert "no succeeded point yet" in exc.value.detail

    jobs = [p["job_id"] for p in sweep["points"]]
    record_epochs(server, jobs[0], [{"val_accuracy": 0.5, "val_nll": 1.2}])
    record_epochs(server, jobs[2], [{"val_accuracy": 0.7, "val_nll": 0.9}])
    update_job(server, jobs[0], status=JobStatus.succeeded, progress=1.0)
    files = succeed_with_artifacts(server, jobs[2])
    for job in jobs[1::2]:
        update_job(server, job, status=JobStatus.failed, error_code="diverged")

    done = kd.wait_sweep(sweep["id"], timeout=0)

    assert done["status"] == "succeeded"
    assert [p["job_id"] for p in done["leaderboard"]] == [jobs[2], jobs[0]]
    assert done["best_job_id"] == jobs[2]
    assert kd.list_sweep_artifacts(sweep["id"])["job_id"] == jobs[2]
    paths = kd.download_sweep(sweep["id"], tmp_path / "best")
    assert {p.name: p.read_bytes() for p in paths} == files
    assert not list((tmp_path / "best").glob("*.part"))
    with pytest.raises(KDServeAPIError) as exc:
        kd.cancel_sweep(sweep["id"])
    assert (exc.value.status, exc.value.code) == (409, "conflict")


def test_cancel_sweep_cancels_its_queued_points(
    kd: KDServeClient, server: Server, tmp_path: Path
) -> None:
    sweep = kd.submit_sweep(**_sweep_args(kd, server, tmp_path))

    canceled = kd.cancel_sweep(sweep["id"])

    assert canceled["status"] == "canceled"
    assert {p["status"] for p in canceled["points"]} == {"canceled"}
    assert kd.wait_sweep(sweep["id"], timeout=0)["status"] == "canceled"


def test_a_bad_grid_is_a_422_naming_its_path(
    kd: KDServeClient, server: Server, tmp_path: Path
) -> None:
    with pytest.raises(KDServeAPIError) as exc:
        kd.submit_sweep(**_sweep_args(kd, server, tmp_path, lr=[0.1, 0]))
    assert (exc.value.status, exc.value.code) == (422, "invalid")
    assert "grid.lr.1" in exc.value.detail
    assert exc.value.errors
    assert exc.value.errors[0]["loc"] == ["grid", "lr", 1]
    assert kd.list_sweeps() == []


def test_a_lost_sweep_submit_response_is_retried_without_a_second_sweep(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    wire = Wire(server, lose={"POST /v1/sweeps": 1})
    kd = client_over(wire, api_key)

    sweep = kd.submit_sweep(**_sweep_args(kd, server, tmp_path))

    posts = [r for r in wire.requests if r.method == "POST" and r.url.path == "/v1/sweeps"]
    assert len(posts) == 2
    assert posts[0].headers["idempotency-key"] == posts[1].headers["idempotency-key"]
    assert [s["id"] for s in kd.list_sweeps()] == [sweep["id"]]
    assert len(kd.list_jobs()) == 2
