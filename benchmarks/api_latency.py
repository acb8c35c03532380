"""API latency on loopback against the real services of this machine.

Starts `kdserve api` (uvicorn) and `kdserve worker` processes on a fresh PostgreSQL database
and a Redis database, then measures:

1. `POST /v1/jobs`: p50/p99 over sequential submissions;
2. `GET /v1/jobs/{id}`: p50/p99 over sequential polls;
3. status-poll throughput with N concurrent clients (asyncio + httpx) for a fixed time;
4. submit-to-running with an idle worker: from the submit response to the job's
   `started_at` (server clocks), and until a poller sees `running`.

Every request loop is bounded in count and time and talks to 127.0.0.1 only.

Usage: .venv/bin/python benchmarks/api_latency.py [--submits 200] [--pollers 50] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg

PG = os.environ.get("KDSERVE_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS = "redis://127.0.0.1:6379/13"
KDSERVE = str(Path(sys.executable).with_name("kdserve"))


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def services(
    workdir: Path, *, worker_queues: str | None = None, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[str, dict[str, str], str]]:
    """The API and one worker (on the job queue and `default`, or on ``worker_queues``) on a
    fresh database; yields the URL, the environment and a key of tenant `bench`."""
    db = f"kdserve_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    port = free_port()
    env = {
        **os.environ,
        "KDSERVE_HOME": str(workdir),
        "KDSERVE_DATABASE_URL": PG.replace("postgresql://", "postgresql+psycopg://") + f"/{db}",
        "KDSERVE_BROKER_URL": REDIS,
        "KDSERVE_STORAGE_URL": (workdir / "storage").as_uri(),
        "KDSERVE_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
        "KDSERVE_API_PORT": str(port),
        **(extra_env or {}),
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([KDSERVE, "db", "upgrade"], env=env, check=True, capture_output=True)
        key = subprocess.run(
            [KDSERVE, "keys", "create", "--tenant", "bench"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        log = (workdir / "api.log").open("wb")
        procs.append(
            subprocess.Popen(
                [KDSERVE, "api", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        )
        wlog = (workdir / "worker.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    KDSERVE,
                    "worker",
                    "--queues",
                    worker_queues or f"{env['KDSERVE_QUEUE']},default",
                    "--concurrency",
                    "1",
                    "--no-beat",
                ],
                env=env,
                stdout=wlog,
                stderr=subprocess.STDOUT,
            )
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        else:
            raise RuntimeError(f"the API did not become ready; see {workdir}/api.log")
        yield url, env, key
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        redis_flush()
        with psycopg.connect(PG + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def redis_flush() -> None:
    import redis

    redis.Redis.from_url(REDIS).flushdb()


def ready_dataset(client: httpx.Client) -> str:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, x=rng.integers(0, 255, (512, 1, 8, 8), dtype=np.uint8), y=np.arange(512) % 4)
    ds = client.post("/v1/datasets", files={"file": ("bench.npz", buf.getvalue())}).json()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = client.get(f"/v1/datasets/{ds['id']}").json()
        if body["status"] != "validating":
            assert body["status"] == "ready", body
            return str(ds["id"])
        time.sleep(0.2)
    raise RuntimeError("dataset validation timed out")


def job_body(dataset_id: str, epochs: int = 1) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "student": {"family": "mlp", "hidden": [16]},
        "config": {"method": "scratch", "epochs": epochs, "batch_size": 64},
    }


def measure(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, services(Path(tmp)) as (url, env, key):
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            dataset = ready_dataset(client)
            # Stop the worker from taking phase-1 jobs: they are canceled before it can.
            post_ms, ids = [], []
            for _ in range(args.submits):
                t0 = time.perf_counter()
                r = client.post("/v1/jobs", json=job_body(dataset, epochs=50))
                post_ms.append((time.perf_counter() - t0) * 1000)
                assert r.status_code in (202, 429), r.text
                if r.status_code == 202:
                    job_id = r.json()["id"]
                    ids.append(job_id)
                    client.post(f"/v1/jobs/{job_id}/cancel")  # keeps the tenant under its limit
            get_ms = []
            for i in range(args.submits):
                t0 = time.perf_counter()
                r = client.get(f"/v1/jobs/{ids[i % len(ids)]}")
                get_ms.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200
        print(
            f"POST /v1/jobs      n={len(post_ms):4d}  p50 {pct(post_ms, 50):7.2f} ms  "
            f"p99 {pct(post_ms, 99):7.2f} ms",
            flush=True,
        )
        print(
            f"GET  /v1/jobs/{{id}} n={len(get_ms):4d}  p50 {pct(get_ms, 50):7.2f} ms  "
            f"p99 {pct(get_ms, 99):7.2f} ms",
            flush=True,
        )

        lat, errors, count = asyncio.run(poll_storm(url, headers, ids, args.pollers, args.seconds))
        print(
            f"polling: {args.pollers} concurrent clients for {args.seconds:.0f} s: "
            f"{count / args.seconds:.0f} req/s, p50 {pct(lat, 50):.2f} ms, "
            f"p99 {pct(lat, 99):.2f} ms, errors {errors}",
            flush=True,
        )

        # The canceled jobs of phase 1 left their messages queued; each would cost the worker a
        # fresh child to find nothing to do. Drop them so phase 4 starts with an idle worker.
        import redis

        redis.Redis.from_url(REDIS).delete(env["KDSERVE_QUEUE"])
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            server, seen = [], []
            for _ in range(args.starts):
                wait_idle(client)
                time.sleep(args.settle)  # the last job's child exits; a fresh one is forked
                t0 = time.perf_counter()
                job = client.post("/v1/jobs", json=job_body(dataset, epochs=50)).json()
                while True:
                    body = client.get(f"/v1/jobs/{job['id']}").json()
                    if body["status"] != "queued" or time.perf_counter() - t0 > 60:
                        break
                    time.sleep(0.01)
                seen.append((time.perf_counter() - t0) * 1000)
                if body["started_at"] is None:
                    raise RuntimeError(f"job did not start: {body['status']} {body['error']}")
                started = datetime.fromisoformat(body["started_at"])
                created = datetime.fromisoformat(body["created_at"])
                server.append((started - created).total_seconds() * 1000)
                client.post(f"/v1/jobs/{job['id']}/cancel")
        print(
            f"submit-to-running (idle worker) n={len(server)}: created→started_at p50 "
            f"{pct(server, 50):.0f} ms (max {max(server):.0f}); seen by a 10 ms poller p50 "
            f"{pct(seen, 50):.0f} ms",
            flush=True,
        )


def wait_idle(client: httpx.Client) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        busy = client.get("/v1/jobs", params={"status": "running"}).json()["items"]
        if not busy:
            return
        time.sleep(0.2)


async def poll_storm(
    url: str, headers: dict[str, str], ids: list[str], clients: int, seconds: float
) -> tuple[list[float], int, int]:
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30, limits=limits) as c:

        async def poller(n: int) -> None:
            nonlocal errors
            i = n
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    r = await c.get(f"/v1/jobs/{ids[i % len(ids)]}")
                    if r.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append((time.perf_counter() - t0) * 1000)
                i += 1

        await asyncio.gather(*(poller(n) for n in range(clients)))
    return latencies, errors, len(latencies)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--submits", type=int, default=200)
    ap.add_argument("--pollers", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds the worker stays idle before each submit-to-running sample",
    )
    args = ap.parse_args()
    print(
        f"{os.cpu_count()} CPUs; API: 1 uvicorn process; PostgreSQL and Redis on loopback",
        flush=True,
    )
    measure(args)


if __name__ == "__main__":
    main()
