"""The yardstick for `benchmarks/status_path.py`: a minimal FastAPI endpoint on asyncpg that
does the same work as `GET /v1/jobs/{id}` (the key looked up by its prefix and compared by
SHA-256 as :mod:`store.keys` does, one job row by id and tenant, the same JSON body), and
nothing else: no middleware, no ETag, no metrics.

Run: ``BASELINE_DSN=postgresql://... uvicorn benchmarks.status_baseline:app``
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
from fastapi import FastAPI, Request, Response

JOB = """SELECT id, name, status, method, teacher_id, dataset_id, val_dataset_id, student,
config, stage, epoch, progress, metrics, choices, sweep_id, error_code, error_message,
warnings, attempts, cancel_requested, created_at, updated_at, started_at, finished_at
FROM jobs WHERE id = $1 AND tenant_id = $2"""
KEY = "SELECT tenant_id, key_hash FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.pool = await asyncpg.create_pool(os.environ["BASELINE_DSN"], min_size=1, max_size=10)
    yield
    await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


@app.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, request: Request) -> Response:
    auth = request.headers.get("authorization", "")
    key = auth[7:] if auth.lower().startswith("bearer ") else ""
    parts = key.split("_", 2)
    if len(parts) != 3:
        return Response(status_code=401)
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as conn:
        row = await conn.fetchrow(KEY, parts[1])
        given = hashlib.sha256(key.encode()).hexdigest()
        if row is None or not hmac.compare_digest(given, row["key_hash"]):
            return Response(status_code=401)
        j = await conn.fetchrow(JOB, uuid.UUID(job_id), row["tenant_id"])
    if j is None:
        return Response(status_code=404)
    error = {"code": j["error_code"], "message": j["error_message"] or ""}
    body = {
        "id": str(j["id"]),
        "name": j["name"],
        "status": j["status"],
        "method": j["method"],
        "teacher_id": str(j["teacher_id"]) if j["teacher_id"] else None,
        "dataset_id": str(j["dataset_id"]),
        "val_dataset_id": str(j["val_dataset_id"]) if j["val_dataset_id"] else None,
        "student": _json(j["student"]),
        "config": _json(j["config"]),
        "stage": j["stage"],
        "epoch": j["epoch"],
        "progress": j["progress"],
        "metrics": _json(j["metrics"]) or {},
        "choices": _json(j["choices"]) or {},
        "sweep_id": str(j["sweep_id"]) if j["sweep_id"] else None,
        "error": error if j["error_code"] else None,
        "warnings": _json(j["warnings"]) or [],
        "attempts": j["attempts"],
        "cancel_requested": j["cancel_requested"],
        "created_at": _iso(j["created_at"]),
        "updated_at": _iso(j["updated_at"]),
        "started_at": _iso(j["started_at"]),
        "finished_at": _iso(j["finished_at"]),
    }
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")
