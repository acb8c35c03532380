"""`GET /v1/jobs/{id}` against a minimal asyncpg endpoint doing the same work, side by side.

Creates a fresh PostgreSQL database (Alembic's schema), one tenant, key and job; starts the
real `kdserve api` process and `benchmarks/status_baseline.py` under uvicorn (one process
each, on 127.0.0.1), then runs `wrk` (2 threads, `--latency`) against each, alternating
kdserve and baseline for every connection count, and prints req/s, p50 and p99 of each and
the ratios, PASS/FAIL against the target of issue 12: kdserve at least 0.7x the baseline's
req/s and at most 2x its p99. The machine is shared: the load average is printed with the
figures, and only the ratios of one alternated run mean anything.

Usage: .venv/bin/python -m benchmarks.status_path [--seconds 15] [--connections 1 10 50]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from tests.api.factories import create_job, make_tenant
from tests.pg import fresh_database

ROOT = Path(__file__).resolve().parents[1]
KDSERVE = str(Path(sys.executable).with_name("kdserve"))
WRK = "/usr/bin/wrk"
MIN_RPS_RATIO, MAX_P99_RATIO = 0.7, 2.0
# wrk calls done() once at the end: print what we need as one JSON line.
DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


@dataclass(frozen=True)
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer; see {log}")


@contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def wrk(url: str, key: str, *, connections: int, seconds: int, script: Path) -> Run:
    out = subprocess.run(
        [WRK, "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{seconds}s"]
        + ["--latency", "--timeout", "10s", "-s", str(script)]
        + ["-H", f"Authorization: Bearer {key}", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return Run(
        rps=r["requests"] / (r["duration_us"] / 1e6),
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        errors=r["errors"],
    )


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=15, help="each wrk run's duration")
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--warmup", type=int, default=3, help="seconds of wrk before measuring")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, {load()} at the start", flush=True)

    with tempfile.TemporaryDirectory() as tmp, fresh_database("kdserve_bench") as db_url:
        work = Path(tmp)
        script = work / "done.lua"
        script.write_text(DONE_LUA)
        kd_port, base_port = free_port(), free_port()
        env = {
            **os.environ,
            "KDSERVE_HOME": str(work),
            "KDSERVE_DATABASE_URL": db_url,
            "KDSERVE_STORAGE_URL": (work / "storage").as_uri(),
            "KDSERVE_API_PORT": str(kd_port),
            "BASELINE_DSN": db_url.replace("postgresql+psycopg://", "postgresql://", 1),
        }
        subprocess.run([KDSERVE, "db", "upgrade"], env=env, check=True, capture_output=True)
        engine = create_engine(db_url)
        sessions = sessionmaker(engine, expire_on_commit=False)
        tenant = make_tenant(sessions, "bench")
        with sessions() as s, s.begin():
            job_id = create_job(s, tenant.id).id
        engine.dispose()

        # Both without access logs: a log line per request is not the work compared.
        kd = [
            KDSERVE,
            "api",
            "--host",
            "127.0.0.1",
            "--port",
            str(kd_port),
            "--log-level",
            "warning",
        ]
        base = [sys.executable, "-m", "uvicorn", "benchmarks.status_baseline:app"]
        base += ["--host", "127.0.0.1", "--port", str(base_port), "--log-level", "warning"]
        with (
            process(kd, env, work / "kdserve.log"),
            process(base, env, work / "baseline.log"),
        ):
            urls = {
                "kdserve": f"http://127.0.0.1:{kd_port}/v1/jobs/{job_id}",
                "baseline": f"http://127.0.0.1:{base_port}/v1/jobs/{job_id}",
            }
            for name, url in urls.items():
                wait_ready(url, work / f"{name}.log")
                r = httpx.get(url, headers=tenant.headers, timeout=10)
                assert r.status_code == 200, (name, r.status_code, r.text)
                wrk(url, tenant.key, connections=10, seconds=args.warmup, script=script)

            rows: list[tuple[int, Run, Run, str]] = []
            for c in args.connections:
                got = {}
                for name in ("kdserve", "baseline"):
                    got[name] = wrk(
                        urls[name], tenant.key, connections=c, seconds=args.seconds, script=script
                    )
                rows.append((c, got["kdserve"], got["baseline"], load()))
                print(f"-c {c}: {got} ({rows[-1][3]})", flush=True)

    print()
    print(
        f"{'conns':>5} | {'kdserve req/s':>13} {'p50 ms':>7} {'p99 ms':>7} | "
        f"{'baseline req/s':>14} {'p50 ms':>7} {'p99 ms':>7} | {'req/s x':>7} {'p99 x':>6} | "
        "verdict | load"
    )
    ok = True
    for c, k, b, ld in rows:
        rps_x, p99_x = k.rps / b.rps, k.p99_ms / b.p99_ms
        passed = rps_x >= MIN_RPS_RATIO and p99_x <= MAX_P99_RATIO and not k.errors
        ok &= passed
        print(
            f"{c:>5} | {k.rps:>13.0f} {k.p50_ms:>7.2f} {k.p99_ms:>7.2f} | "
            f"{b.rps:>14.0f} {b.p50_ms:>7.2f} {b.p99_ms:>7.2f} | {rps_x:>7.2f} {p99_x:>6.2f} | "
            f"{'PASS' if passed else 'FAIL':>7} | {ld.removeprefix('load average ')}"
        )
        if k.errors or b.errors:
            print(f"      errors (socket or non-2xx): kdserve {k.errors}, baseline {b.errors}")
    print(
        f"target: req/s >= {MIN_RPS_RATIO}x and p99 <= {MAX_P99_RATIO}x the baseline's: "
        f"{'PASS' if ok else 'FAIL'}; {load()} at the end"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
