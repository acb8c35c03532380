"""The service demo behind `make demo`: everything a user does, on one machine, offline.

1. start the embedded service (`kdserve up`: SQLite, a SQLite-backed broker, local storage);
2. upload scikit-learn's digits as train and validation datasets;
3. train a teacher with a `scratch` job, then promote its model to a teacher;
4. submit a `fitnet` job for a smaller student and watch it (`kdserve jobs watch`);
5. download the student and print the teacher-vs-student report (`kdserve jobs download`);
6. stop the service.

The terminal shows the steps, each job's progress bar and the report; the service's own
(server and worker) logs go to ``OUT_DIR/service.log``, named at the start.

Usage: python examples/service_demo.py [OUT_DIR]
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "digits"
BIN = Path(sys.executable).parent


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def kdserve(*args: str, env: dict[str, str]) -> None:
    subprocess.run([str(BIN / "kdserve"), *args], env=env, check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(out: Path) -> None:
    from client import KDServeClient

    home = out / "service"
    shutil.rmtree(home, ignore_errors=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDSERVE_")}
    env |= {"KDSERVE_HOME": str(home), "KDSERVE_API_PORT": str(port)}
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_digits.py"), str(out)], check=True
    )

    step(f"starting the embedded service (kdserve up) in {home}")
    home.mkdir(parents=True)
    log_path = out / "service.log"
    print(f"server and worker logs: {log_path}")
    # The terminal keeps the story (steps, progress bars, the report); the service's own
    # logs would interleave with it, so they go to a file the user can open.
    log = log_path.open("wb")
    service = subprocess.Popen(
        [str(BIN / "kdserve"), "up"],
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if service.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service did not start; see {log_path}")
            time.sleep(0.5)
        key = (home / "api-key").read_text().strip()
        env |= {"KDSERVE_URL": url, "KDSERVE_API_KEY": key}
        kd = KDServeClient(url, key)

        step("uploading the digits datasets")
        train = kd.upload_dataset(out / "digits-train.npz", name="digits train")
        val = kd.upload_dataset(out / "digits-test.npz", name="digits test")
        for d in (train, val):
            ready = kd.wait_for("datasets", d["id"], timeout=300)
            print(
                f"dataset {ready['name']}: {ready['status']}, {ready['samples']} samples of "
                f"{ready['input_shape']}, classes {ready['classes']}"
            )
        data = {"dataset_id": train["id"], "val_dataset_id": val["id"]}

        step("training the teacher (scratch job)")
        teacher_job = kd.submit_job(
            student=json.loads((EXAMPLES / "teacher.json").read_text()),
            name="digits teacher",
            config=json.loads((EXAMPLES / "scratch.json").read_text()),
            **data,
        )
        kdserve("jobs", "watch", teacher_job["id"], env=env)

        step("promoting the finished job's model to a teacher")
        teacher = kd.wait_for("teachers", kd.teacher_from_job(teacher_job["id"])["id"], timeout=300)
        print(
            f"teacher {teacher['id']}: {teacher['status']}, {teacher['params']:,} parameters, "
            f"{len(teacher['layers'])} layers"
        )

        step(
            "distilling a smaller student by FitNets (hint relu1 → guided relu2, then KD), "
            'and training it alone too ("baseline": true) to show what distillation bought'
        )
        job = kd.submit_job(
            student=json.loads((EXAMPLES / "student.json").read_text()),
            teacher_id=teacher["id"],
            name="digits student",
            config=json.loads((EXAMPLES / "fitnet.json").read_text()),
            **data,
        )
        kdserve("jobs", "watch", job["id"], env=env)

        step("downloading the student and its report")
        kdserve("jobs", "download", job["id"], "--out", str(out / "student"), env=env)
    finally:
        step("stopping the service")
        os.killpg(service.pid, signal.SIGTERM)
        try:
            service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(service.pid, signal.SIGKILL)
        log.close()
    print(
        f"\nThe student is in {out / 'student'}; load it with "
        f"kdcore.export.load_student('{out / 'student'}')."
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out").resolve())
