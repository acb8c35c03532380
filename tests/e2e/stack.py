"""The service as real processes: `kdserve api` (uvicorn) and `kdserve worker` (Celery) on the
real PostgreSQL and Redis of this machine, with storage on moto's S3 server (standing in for
MinIO/AWS) or a local folder. Everything listens on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from client import KDServeClient

KDSERVE = str(Path(sys.executable).with_name("kdserve"))
ROOT = Path(__file__).resolve().parents[2]


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
                f"{self.env['KDSERVE_QUEUE']},default",
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
