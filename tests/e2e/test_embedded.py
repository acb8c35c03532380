"""The embedded mode end to end: `make demo`'s script runs `kdserve up` (SQLite database and
broker, local storage, no servers), trains a teacher, promotes it, distills a student,
downloads it, and stops the service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdcore.data import Normalizer, load_dataset
from kdcore.evaluate import predict, score
from kdcore.export import load_student
from tests.e2e.stack import ROOT

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_flow_on_the_embedded_service(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDSERVE_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "service_demo.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    log = tmp_path / "service.log"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + log.read_text()[-3000:]
    assert "compression" in done.stdout
    assert "gain" in done.stdout  # the teacher / alone / distilled row
    # The story stays on the terminal; the server's and worker's logs are in the file named.
    assert f"server and worker logs: {log}" in done.stdout
    assert "uvicorn" not in done.stdout + done.stderr
    assert "celery" in log.read_text().lower()
    out = tmp_path / "student"
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "fitnet"
    student, meta = load_student(out)
    test = load_dataset(tmp_path / "digits-test.npz")
    again = score(predict(student, test, Normalizer.from_dict(meta.preprocess)), test.y)
    assert again.accuracy == pytest.approx(report["student"]["accuracy"])
    # The service stopped: no process of it is left holding the SQLite files.
    home = tmp_path / "service"
    assert (home / "kdserve.db").exists()
    assert (home / "api-key").stat().st_mode & 0o777 == 0o600
