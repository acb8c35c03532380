"""The service as real processes: `kdserve api` (uvicorn) and `kdserve worker` (Celery) on the
real PostgreSQL and Redis of this machine, with storage on moto's S3 server (standing in for
MinIO/AWS) or a local folder. Everything listens on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from client import KDServeAPIError, KDServeClient
from tests.pg import fresh_database
from tests.s3 import free_port, moto_s3

KDSERVE = str(Path(sys.executable).with_name("kdserve"))
ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
TEACHER = json.loads((DIGITS / "teacher.json").read_text())
STUDENT = json.loads((DIGITS / "student.json").read_text())
ARTIFACTS = {  # what a job with the default formats publishes
    "student.safetensors",
    "student.json",
    "student.torchscript.pt",
    "student.pt2",
    "student.onnx",
    "report.json",
    "metrics.jsonl",
    "checkpoint.pt",
}
FINAL = ("succeeded", "failed", "canceled")


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    port: int
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, *args: str) -> str:
        done = subprocess.run(
            [KDSERVE, *args], env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    @contextmanager
    def serving(self) -> Iterator[Stack]:
        """Migrate the database, start the API and one worker; stop everything after."""
        self.run("db", "upgrade")
        self.start_api()
        self.start_worker()
        try:
            yield self
        finally:
            self.stop()

    def new_tenant(self, name: str) -> KDServeClient:
        """A tenant with a fresh key (`kdserve keys create`), as a client."""
        return self.client(self.run("keys", "create", "--tenant", name))

    def start_api(self) -> None:
        self._spawn("api", [KDSERVE, "api", "--port", str(self.port)])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            self._check_alive("api")
            time.sleep(0.2)
        raise RuntimeError(self.log("api"))

    def start_worker(self, name: str = "worker") -> None:
        self._spawn(
            name,
            [
                KDSERVE,
                "worker",
                "--queues",
                f"{self.env['KDSERVE_QUEUE']},{self.env['KDSERVE_DEFAULT_QUEUE']}",
                "--concurrency",
                "1",
                "--max-tasks-per-child",
                "1",
                "--beat",
            ],
        )

    def kill(self, name: str) -> None:
        """SIGKILL the process and every process in its group (the Celery pool child too)."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()

    def client(self, key: str) -> KDServeClient:
        return KDServeClient(self.url, key, timeout=60)

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.home / f"{name}.log").open("ab")
        # A process group of its own, so a kill reaches Celery's pool children as well.
        self.procs[name] = subprocess.Popen(
            argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _check_alive(self, name: str) -> None:
        if self.procs[name].poll() is not None:
            raise RuntimeError(f"{name} exited:\n{self.log(name)}")


def service_env(
    home: Path, *, database_url: str, broker_url: str, port: int, extra: dict[str, str]
) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("KDSERVE_")}
    return {
        **keep,
        "PYTHONUNBUFFERED": "1",
        "KDSERVE_HOME": str(home),
        "KDSERVE_DATABASE_URL": database_url,
        "KDSERVE_BROKER_URL": broker_url,
        "KDSERVE_QUEUE": f"e2e-{uuid.uuid4().hex[:8]}",
        # Stacks of concurrent test runs may share a Redis database: their own default queue
        # keeps one stack's worker from taking another's validations.
        "KDSERVE_DEFAULT_QUEUE": f"e2e-default-{uuid.uuid4().hex[:8]}",
        "KDSERVE_API_PORT": str(port),
        # Fast failure detection, so crash tests finish in seconds.
        "KDSERVE_HEARTBEAT_INTERVAL_S": "1",
        "KDSERVE_HEARTBEAT_TIMEOUT_S": "6",
        "KDSERVE_REAP_INTERVAL_S": "2",
        "KDSERVE_JOB_TIME_LIMIT_S": "900",
        "KDSERVE_VISIBILITY_TIMEOUT_S": "901",
        **extra,
    }


def flush_redis(url: str) -> None:
    if url.startswith("redis://"):
        redis.Redis.from_url(url).flushdb()


def make_digits(out: Path) -> Path:
    """scikit-learn's digits as the demo's .npz files (train, test) in ``out``."""
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_digits.py"), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def upload_digits(client: KDServeClient, digits: Path) -> dict[str, str]:
    """Upload the digits train and test sets, wait until both are ready, and return them as
    a job's ``dataset_id`` / ``val_dataset_id``."""
    train = client.upload_dataset(digits / "digits-train.npz", name="digits train")
    val = client.upload_dataset(digits / "digits-test.npz", name="digits test")
    for d in (train, val):
        assert client.wait_for("datasets", d["id"], timeout=120)["status"] == "ready"
    return {"dataset_id": train["id"], "val_dataset_id": val["id"]}


def wait_job(
    client: KDServeClient,
    job_id: str,
    until: Callable[[dict[str, Any]], bool],
    *,
    timeout: float,
    every: float = 0.1,
) -> dict[str, Any]:
    """Poll the job until ``until(job)``; a 503 (the database restarting) is polled through.

    Raises:
        AssertionError: the job ended first, or ``timeout`` passed.
    """
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            job = client.get_job(job_id)
        except KDServeAPIError as exc:
            if exc.status != 503:
                raise
        else:
            if until(job):
                return job
            if job["status"] in FINAL:
                raise AssertionError(f"job {job_id} ended before the condition: {job}")
        time.sleep(every)
    raise AssertionError(f"job {job_id}: condition not met in {timeout} s; last seen {job}")


@contextmanager
def real_stack(
    home: Path, *, redis_url: str, db_prefix: str, extra: dict[str, str] | None = None
) -> Iterator[Stack]:
    """API + worker on a fresh Postgres database, Redis ``redis_url`` and an S3 server;
    ``extra``: more environment variables (settings) for both processes."""
    with fresh_database(db_prefix) as db_url, moto_s3() as s3:
        env = service_env(
            home,
            database_url=db_url,
            broker_url=redis_url,
            port=free_port(),
            extra={**s3, **(extra or {})},
        )
        try:
            with Stack(home=home, env=env, port=int(env["KDSERVE_API_PORT"])).serving() as stack:
                yield stack
        finally:
            flush_redis(redis_url)
