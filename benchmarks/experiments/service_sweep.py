"""A sweep through kdserve's own service: start ``kdserve up``, upload, sweep, report.

Starts the embedded service (SQLite, local storage, one worker) in ``OUT/service``, uploads
the training data and a teacher's weights, submits a sweep (``POST /v1/sweeps``) and waits
for it, then prints the leaderboard and the sweep's wall time, and writes ``OUT/sweep.json``
(the sweep, its best point's overrides, the wall time). ``--no-cache`` runs the same sweep
with ``KDSERVE_TEACHER_CACHE=false`` (every point runs the teacher in its loop), for the
wall-time comparison of docs/results.md.

Usage (from the repository root):
    .venv/bin/python -m benchmarks.experiments.service_sweep OUT --data TRAIN \\
        --teacher W.safetensors --teacher-arch A.json --student S.json --config BASE.json \\
        --grid GRID.json [--no-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(home: Path, cache: bool) -> tuple[subprocess.Popen[bytes], str, str]:
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDSERVE_")}
    env |= {
        "KDSERVE_HOME": str(home),
        "KDSERVE_API_PORT": str(port),
        "KDSERVE_TEACHER_CACHE": "true" if cache else "false",
    }
    log = (home / "service.log").open("wb")
    service = subprocess.Popen(
        [str(BIN / "kdserve"), "up"], env=env, stdout=log, stderr=log, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if service.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the service did not start; see {home / 'service.log'}")
        time.sleep(0.5)
    return service, url, (home / "api-key").read_text().strip()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--teacher-arch", type=Path, required=True)
    ap.add_argument("--student", type=Path, required=True)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--grid", type=Path, required=True)
    ap.add_argument("--no-cache", action="store_true")
    args = ap.parse_args()

    from client import KDServeClient

    args.out.mkdir(parents=True, exist_ok=True)
    service, url, key = _start(args.out / "service", cache=not args.no_cache)
    try:
        kd = KDServeClient(url, key)
        data = kd.wait_for("datasets", kd.upload_dataset(args.data)["id"], timeout=1800)
        print(f"dataset: {data['samples']} samples of {data['input_shape']}", flush=True)
        arch = json.loads(args.teacher_arch.read_text())
        teacher = kd.upload_teacher(
            args.teacher, arch=arch, input_shape=data["input_shape"], num_classes=10
        )
        teacher = kd.wait_for("teachers", teacher["id"], timeout=900)
        print(f"teacher: {teacher['status']}, {teacher['params']:,} parameters", flush=True)
        started = time.monotonic()
        sweep = kd.submit_sweep(
            student=json.loads(args.student.read_text()),
            teacher_id=teacher["id"],
            dataset_id=data["id"],
            config=json.loads(args.config.read_text()),
            grid=json.loads(args.grid.read_text()),
            name=args.out.name,
        )
        done = kd.wait_sweep(sweep["id"], timeout=6 * 3600, interval=5)
        wall = time.monotonic() - started
        caches = [kd.job_report(p["job_id"])["teacher_cache"] for p in done["points"]]
    finally:
        os.killpg(service.pid, signal.SIGTERM)
        try:
            service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
    best = next(p for p in done["points"] if p["job_id"] == done["best_job_id"])
    result: dict[str, Any] = {
        "status": done["status"],
        "wall_seconds": wall,
        "cache": not args.no_cache,
        "best_overrides": best["overrides"],
        "leaderboard": [
            {k: p[k] for k in ("overrides", "val_accuracy", "val_nll", "best_epoch")}
            for p in done["leaderboard"]
        ],
        "teacher_cache": [{k: c[k] for k in ("status", "key", "build_seconds")} for c in caches],
    }
    (args.out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    cache = "on" if result["cache"] else "off"
    print(f"sweep {done['status']} in {wall:.0f} s (teacher cache {cache})")
    for p in result["leaderboard"]:
        print(f"  {p['overrides']}: val_accuracy {p['val_accuracy']:.4f} (epoch {p['best_epoch']})")
    print(f"best: {best['overrides']}")


if __name__ == "__main__":
    main()
