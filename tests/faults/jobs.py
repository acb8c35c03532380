"""Jobs for the fault tests, and what must hold of a job once the fault is over: one
attempt's worth of artifacts, metrics and rows, each downloadable."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg

from client import KDServeAPIError, KDServeClient
from tests.e2e.stack import ARTIFACTS, FINAL


def scratch(epochs: int) -> dict[str, Any]:
    return {"method": "scratch", "epochs": epochs, "batch_size": 64, "seed": 0}


def fitnet(hint_epochs: int, kd_epochs: int) -> dict[str, Any]:
    return {
        "method": "fitnet",
        "epochs": kd_epochs,
        "batch_size": 64,
        "temperature": 4,
        "alpha": 0.1,
        "seed": 0,
        "hint": {"teacher_layer": "relu1", "student_layer": "relu2", "epochs": hint_epochs},
    }


def wait_final(client: KDServeClient, job_id: str, *, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            job = client.get_job(job_id)
        except KDServeAPIError as exc:
            if exc.status != 503:
                raise
        else:
            if job["status"] in FINAL:
                return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not final after {timeout} s: {client.get_job(job_id)}")


def rows_of(database_url: str, job_id: str) -> dict[str, Any]:
    """What Postgres holds for the job: attempts, artifact rows, metric points (and any
    duplicate (key, step) among them)."""
    url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url) as conn:
        attempts = conn.execute("SELECT attempts FROM jobs WHERE id = %s", (job_id,)).fetchone()
        names = [
            r[0] for r in conn.execute("SELECT name FROM artifacts WHERE job_id = %s", (job_id,))
        ]
        points, dupes = conn.execute(
            "SELECT count(*), count(*) - count(DISTINCT (key, step)) FROM metric_points "
            "WHERE job_id = %s",
            (job_id,),
        ).fetchone() or (0, 0)
    return {
        "attempts": attempts[0] if attempts else None,
        "artifacts": sorted(names),
        "points": points,
        "duplicate_points": dupes,
    }


def assert_one_clean_run(
    client: KDServeClient,
    database_url: str,
    job: dict[str, Any],
    *,
    epochs: list[tuple[str, int]],
    attempts: int,
    folder: Path,
) -> None:
    """The job succeeded once: ``attempts`` attempts, exactly one set of artifacts, every
    one downloadable with its listed sha256, one metric row per epoch of each stage."""
    assert job["status"] == "succeeded", job
    assert job["attempts"] == attempts, job
    rows = rows_of(database_url, job["id"])
    assert rows["attempts"] == attempts
    assert rows["artifacts"] == sorted(ARTIFACTS), rows
    assert rows["duplicate_points"] == 0, rows
    listed = client.list_artifacts(job["id"])
    assert sorted(a["name"] for a in listed) == sorted(ARTIFACTS)
    folder.mkdir(parents=True, exist_ok=True)
    client.download_all(job["id"], folder)  # checks each file's sha256 against the listing
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [(m["stage"], m["epoch"]) for m in metrics] == [
        (stage, e) for stage, n in epochs for e in range(1, n + 1)
    ]
    series = client.job_metrics(job["id"])
    total = sum(n for _, n in epochs)
    assert sorted({p["step"] for s in series.values() for p in s}) == list(range(1, total + 1))
