"""A bounded loopback load test of the API: concurrent pollers plus job submissions.

Starts `kdserve api` (one uvicorn process) and one `kdserve worker` on a fresh PostgreSQL
database and Redis (`benchmarks.api_latency.services`), uploads a dataset that the worker
validates, then for ``--duration`` seconds runs ``--pollers`` concurrent clients that poll
jobs (`GET /v1/jobs/{id}`, and every ``--list-every``-th request `GET /v1/jobs?limit=20`)
while ``--submissions`` jobs are submitted (`POST /v1/jobs`), paced evenly over the same
window by ``--submitters`` concurrent clients. The worker listens only on the `default`
queue (dataset validation), so the jobs stay queued: this measures the API, Postgres and Redis,
not training. `KDSERVE_MAX_RUNNING_JOBS_PER_TENANT` is set above the number of submissions, so
the per-tenant limit of queued and running jobs never answers 429.

Every response other than 200/202, and every transport error, is an error; the script prints
the total, the errors, the throughput and p50/p99/max latency per operation, and exits 1 if
any request failed. It drops the database and flushes the Redis database it used.

With ``--url URL --key KEY`` it drives a service that is already running instead (its worker
must validate datasets; its limit must allow the submissions); afterwards it cancels the jobs
it submitted and deletes its dataset.

Usage: .venv/bin/python benchmarks/load_test.py [--pollers 100] [--duration 60]
       [--submissions 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.api_latency import job_body, pct, ready_dataset, services  # noqa: E402

OK = {200, 202}


@dataclass
class Record:
    """Latencies (ms) and errors per operation."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    samples: dict[str, str] = field(default_factory=dict)  # the first error of each operation

    async def timed(self, op: str, call: Awaitable[httpx.Response]) -> str | None:
        """Await ``call`` (a request), record it under ``op``; the new job's id for a submit."""
        t0 = time.perf_counter()
        try:
            r = await call
        except httpx.HTTPError as exc:
            self.latencies[op].append((time.perf_counter() - t0) * 1000)
            self._error(op, f"{type(exc).__name__}: {exc}")
            return None
        self.latencies[op].append((time.perf_counter() - t0) * 1000)
        if r.status_code not in OK:
            self._error(op, f"{r.status_code} {r.text[:300]}")
            return None
        return str(r.json()["id"]) if op == "POST /v1/jobs" else None

    def _error(self, op: str, what: str) -> None:
        self.errors[op] += 1
        self.samples.setdefault(op, what)


async def load(
    url: str, headers: dict[str, str], dataset: str, args: argparse.Namespace
) -> tuple[Record, list[str], float]:
    rec = Record()
    ids: list[str] = []
    conns = args.pollers + args.submitters
    # uvicorn closes a connection idle for 5 s (`timeout_keep_alive`), httpx's default expiry
    # is also 5 s: a request sent on a connection as the server closes it fails with
    # ReadError (a few per 10,000 requests here). Expiring ours first avoids that race.
    limits = httpx.Limits(
        max_connections=conns, max_keepalive_connections=conns, keepalive_expiry=1.0
    )
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=args.timeout, limits=limits
    ) as client:
        # A few jobs first, so pollers have ids from their first request (not counted).
        for _ in range(min(5, args.submissions)):
            r = await client.post("/v1/jobs", json=job_body(dataset))
            r.raise_for_status()
            ids.append(str(r.json()["id"]))
        start = time.monotonic()
        stop = start + args.duration
        gap = args.duration / max(args.submissions, 1)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(args.submissions):
            queue.put_nowait(i)

        async def poller(n: int) -> None:
            i = n
            while time.monotonic() < stop:
                if i % args.list_every == 0:
                    call = client.get("/v1/jobs", params={"limit": 20})
                    await rec.timed("GET /v1/jobs", call)
                else:
                    call = client.get(f"/v1/jobs/{ids[(i * 7919) % len(ids)]}")
                    await rec.timed("GET /v1/jobs/{id}", call)
                i += 1

        async def submitter() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                # Paced: submission i is sent at start + i * gap, or as soon as one is free.
                await asyncio.sleep(max(0.0, start + i * gap - time.monotonic()))
                job = await rec.timed(
                    "POST /v1/jobs", client.post("/v1/jobs", json=job_body(dataset))
                )
                if job is not None:
                    ids.append(job)

        await asyncio.gather(
            *(poller(n) for n in range(args.pollers)),
            *(submitter() for _ in range(args.submitters)),
        )
        elapsed = time.monotonic() - start
    return rec, ids, elapsed


def report(rec: Record, elapsed: float) -> int:
    total = sum(len(v) for v in rec.latencies.values())
    errors = sum(rec.errors.values())
    print(
        f"\n{'operation':<20} {'requests':>9} {'errors':>7} {'req/s':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    for op in ("GET /v1/jobs/{id}", "GET /v1/jobs", "POST /v1/jobs"):
        lat = rec.latencies.get(op, [])
        if not lat:
            continue
        print(
            f"{op:<20} {len(lat):>9,} {rec.errors.get(op, 0):>7} {len(lat) / elapsed:>8.1f} "
            f"{pct(lat, 50):>8.1f} {pct(lat, 99):>8.1f} {max(lat):>8.1f}"
        )
    every = [x for v in rec.latencies.values() for x in v]
    print(
        f"{'all':<20} {total:>9,} {errors:>7} {total / elapsed:>8.1f} "
        f"{pct(every, 50):>8.1f} {pct(every, 99):>8.1f} {max(every):>8.1f}"
    )
    print(
        f"\ntotal requests {total:,} in {elapsed:.1f} s, errors {errors}, "
        f"throughput {total / elapsed:.1f} req/s"
    )
    for op, what in rec.samples.items():
        print(f"first error of {op}: {what}")
    return 1 if errors else 0


@contextmanager
def target(args: argparse.Namespace) -> Iterator[tuple[str, str, Path | None]]:
    """The service to load (URL, key, API log): the given one, or one started here (and
    dropped afterwards)."""
    if args.url:
        yield args.url, args.key, None
        return
    extra = {"KDSERVE_MAX_RUNNING_JOBS_PER_TENANT": str(args.submissions + 100)}
    with (
        tempfile.TemporaryDirectory() as tmp,
        services(Path(tmp), worker_queues="default", extra_env=extra) as (url, _env, key),
    ):
        yield url, key, Path(tmp) / "api.log"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pollers", type=int, default=100)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of polling")
    ap.add_argument("--submissions", type=int, default=500)
    ap.add_argument("--submitters", type=int, default=10, help="concurrent submitting clients")
    ap.add_argument("--list-every", type=int, default=5, help="every Nth poll lists jobs")
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    ap.add_argument("--url", help="a running service to load instead of starting one")
    ap.add_argument("--key", help="an API key of that service (with --url)")
    args = ap.parse_args()
    if bool(args.url) != bool(args.key):
        ap.error("--url and --key go together")
    print(
        f"{os.cpu_count()} CPUs; {args.pollers} pollers for {args.duration:.0f} s, "
        f"{args.submissions} submissions by {args.submitters} clients; "
        + (
            f"service at {args.url}"
            if args.url
            else "1 uvicorn process, PostgreSQL and Redis on loopback"
        ),
        flush=True,
    )
    with target(args) as (url, key, log):
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            dataset = ready_dataset(client)
        rec, ids, elapsed = asyncio.run(load(url, headers, dataset, args))
        if args.url:  # leave the service as it was
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                for job in ids:
                    client.post(f"/v1/jobs/{job}/cancel")
                client.delete(f"/v1/datasets/{dataset}")
        status = report(rec, elapsed)
        if status and log is not None:
            lines = [
                ln
                for ln in log.read_text(errors="replace").splitlines()
                if not ln.startswith("INFO:     127.0.0.1")  # the access log
            ]
            print("\nthe API's log, without the access log (last lines):", *lines[-40:], sep="\n")
    sys.exit(status)


if __name__ == "__main__":
    main()
