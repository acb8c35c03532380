"""`kdserve sweeps ...` against the API in-process (no worker: the rows a worker would write
are written here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli import remote
from cli.main import app
from client import KDServeClient
from store.models import AssetStatus, JobStatus
from tests.client.factories import (
    DIGITS,
    Server,
    mark_dataset_ready,
    mark_teacher,
    record_epochs,
    scratch_config,
    student_spec,
    succeed_with_artifacts,
    update_job,
    write_file,
)

runner = CliRunner()


@pytest.fixture(autouse=True)
def _in_process(monkeypatch: pytest.MonkeyPatch, server: Server, api_key: str) -> None:
    """Commands reach the in-process API with the test's key."""

    def make_client(url: str | None, key: str | None) -> KDServeClient:
        kd = KDServeClient(api_key=api_key if key is None else key, http=server.http)
        kd._sleep = lambda _s: None
        return kd

    monkeypatch.setattr(remote, "make_client", make_client)
    monkeypatch.delenv("KDSERVE_API_KEY", raising=False)
    monkeypatch.delenv("KDSERVE_URL", raising=False)


def test_submit_prints_the_points_then_the_sweep_id(tmp_path: Path, server: Server) -> None:
    weights = write_file(tmp_path / "t.safetensors", 512, seed=9)
    up = runner.invoke(
        app,
        ["teachers", "upload", str(weights), "--input-shape", "1,8,8", "--classes", "10",
         "--arch", str(DIGITS / "teacher.json")],
    )  # fmt: skip
    teacher = json.loads(up.stdout)["id"]
    mark_teacher(server, teacher, AssetStatus.ready)
    kd = {"method": "kd", "epochs": 1, "batch_size": 16}
    args = _submit_args(tmp_path, server, {"temperature": [2, 4]}, config=kd)

    result = runner.invoke(
        app,
        [*args, "--teacher", teacher, "--scratch", "--metric", "val_nll", "--name", "temps"],
    )

    assert result.exit_code == 0, result.output
    *table, last = result.stdout.strip().splitlines()
    sweep = json.loads(runner.invoke(app, ["sweeps", "get", last]).stdout)
    assert (sweep["name"], sweep["metric"], len(sweep["points"])) == ("temps", "val_nll", 3)
    assert sweep["base"]["teacher_id"] == teacher
    text = "\n".join(table)
    assert all(p["job_id"] in text for p in sweep["points"])
    assert 'method="scratch" seed=0' in text
    assert f"kdserve sweeps watch {last}" in result.stderr
    quiet = runner.invoke(app, [*args, "--teacher", teacher, "-q"])
    assert quiet.exit_code == 0, quiet.output
    assert len(quiet.stdout.split()) == 1
    listed = json.loads(runner.invoke(app, ["sweeps", "list", "--json"]).stdout)
    assert [s["id"] for s in listed] == [quiet.stdout.strip(), last]


def test_a_refused_submit_prints_the_problem_and_exits_2(tmp_path: Path, server: Server) -> None:
    result = runner.invoke(app, _submit_args(tmp_path, server, {"lr": [0.5, 20]}))

    assert result.exit_code == 2
    assert "grid.lr.1: Input should be less than or equal to 10" in result.stderr
    assert "HTTP 422 invalid" in result.stderr


def test_watch_prints_progress_then_the_leaderboard_and_exits_0(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep_id, jobs = _submitted(tmp_path, server, {"lr": [0.01, 0.1, 0.2]})

    def all_end() -> None:
        record_epochs(server, jobs[0], [{"val_accuracy": 0.75, "val_nll": 0.6}])
        record_epochs(server, jobs[1], [{"val_accuracy": 0.85, "val_nll": 0.4}])
        update_job(server, jobs[0], status=JobStatus.succeeded)
        update_job(server, jobs[1], status=JobStatus.succeeded)
        update_job(
            server,
            jobs[2],
            status=JobStatus.failed,
            error_code="diverged",
            error_message="loss is NaN",
        )

    steps = iter(
        [
            lambda: None,
            lambda: update_job(server, jobs[0], status=JobStatus.running),
            lambda: None,  # nothing changed since the last poll: no line
            all_end,
        ]
    )
    real_get = KDServeClient.get_sweep

    def worker_progresses(self: KDServeClient, sweep_id: str) -> Any:
        next(steps, lambda: None)()
        return real_get(self, sweep_id)

    monkeypatch.setattr(KDServeClient, "get_sweep", worker_progresses)
    result = runner.invoke(app, ["sweeps", "watch", sweep_id, "--interval", "0"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "queued: 3 queued",
        "running: 2 queued, 1 running",
        f"succeeded: 2 succeeded, 1 failed; best {jobs[1]} val_accuracy=0.8500",
    ]
    table = "\n".join(lines[3:])
    assert table.index(jobs[1]) < table.index(jobs[0])  # best first
    assert "0.8500" in table
    assert jobs[2] not in table
    assert "point 2 (lr=0.2) failed: diverged: loss is NaN" in result.stderr
    assert f"kdserve sweeps download {sweep_id}" in result.stderr


def test_watch_exits_1_when_no_point_succeeded(tmp_path: Path, server: Server) -> None:
    sweep_id, _jobs = _submitted(tmp_path, server, {"seed": [1, 2]})
    assert runner.invoke(app, ["sweeps", "cancel", sweep_id]).exit_code == 0

    result = runner.invoke(app, ["sweeps", "watch", sweep_id, "--interval", "0"])

    assert result.exit_code == 1
    assert f"sweep {sweep_id} canceled" in result.stderr
    again = runner.invoke(app, ["sweeps", "cancel", sweep_id])
    assert again.exit_code == 2
    assert "HTTP 409 conflict" in again.stderr


def test_download_writes_the_best_points_artifacts_and_prints_its_report(
    tmp_path: Path, server: Server
) -> None:
    sweep_id, jobs = _submitted(tmp_path, server, {"seed": [1, 2]})
    none_yet = runner.invoke(app, ["sweeps", "download", sweep_id, "--out", str(tmp_path / "x")])
    assert none_yet.exit_code == 2
    assert "no succeeded point yet" in none_yet.stderr
    record_epochs(server, jobs[1], [{"val_accuracy": 0.9, "val_nll": 0.3}])
    files = succeed_with_artifacts(server, jobs[1])

    result = runner.invoke(app, ["sweeps", "download", sweep_id, "--out", str(tmp_path / "out")])

    assert result.exit_code == 0, result.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files
    assert f"best point 1 (seed=2): job {jobs[1]}" in result.stderr
    assert "still running: this is the best point so far" in result.stderr
    assert "report (scratch, 100 validation samples)" in result.stdout
    table = runner.invoke(app, ["sweeps", "list"])
    assert table.exit_code == 0, table.output
    assert sweep_id in table.stdout
    assert "val_accuracy=0.9000" in table.stdout


def test_every_sweeps_command_has_help() -> None:
    for command in ("submit", "watch", "download", "list", "get", "cancel"):
        result = runner.invoke(app, ["sweeps", command, "--help"])
        assert result.exit_code == 0, command
        assert "--url" in result.stdout


# -- helpers -----------------------------------------------------------------------------------


def _submit_args(
    tmp_path: Path, server: Server, grid: dict[str, Any], config: dict[str, Any] | None = None
) -> list[str]:
    up = runner.invoke(app, ["datasets", "upload", str(write_file(tmp_path / "r.npz", 256))])
    dataset: str = json.loads(up.stdout)["id"]
    mark_dataset_ready(server, dataset)
    files = {"s.json": student_spec(), "c.json": config or scratch_config(), "g.json": grid}
    for name, obj in files.items():
        (tmp_path / name).write_text(json.dumps(obj))
    return [
        "sweeps", "submit", "--data", dataset, "--student", str(tmp_path / "s.json"),
        "--config", str(tmp_path / "c.json"), "--grid", str(tmp_path / "g.json"),
    ]  # fmt: skip


def _submitted(tmp_path: Path, server: Server, grid: dict[str, Any]) -> tuple[str, list[str]]:
    result = runner.invoke(app, [*_submit_args(tmp_path, server, grid), "-q"])
    assert result.exit_code == 0, result.output
    sweep_id = result.stdout.strip()
    sweep = json.loads(runner.invoke(app, ["sweeps", "get", sweep_id]).stdout)
    return sweep_id, [p["job_id"] for p in sweep["points"]]
