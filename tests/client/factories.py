"""Test setup for client and remote-command tests: an API in-process on a migrated SQLite
home, tenants with keys, and rows a worker would have written (no worker runs here)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from client import KDServeClient
from store.blobs import BlobStore
from store.db import transaction
from store.models import Artifact, AssetStatus, DatasetRecord, Job, JobStatus, MetricPoint, Teacher
from store.repositories.tenants import TenantRepository
from store.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"


@dataclass
class Server:
    settings: Settings
    http: TestClient
    sessions: sessionmaker[Session]
    store: BlobStore


def create_key(server: Server, tenant: str | None = None) -> str:
    """A key of a new (or the named) tenant: each test sees only its own rows."""
    with transaction(server.sessions) as session:
        repo = TenantRepository(session)
        return repo.create_key(repo.get_or_create(tenant or f"t-{uuid.uuid4().hex[:12]}"))


def write_file(path: Path, size: int, seed: int = 0) -> Path:
    """``size`` bytes that differ by ``seed`` (uploads are deduplicated by content)."""
    block = uuid.UUID(int=seed).bytes + bytes(range(256))
    path.write_bytes((block * (size // len(block) + 1))[:size])
    return path


def mark_dataset_ready(
    server: Server,
    dataset_id: str,
    *,
    samples: int = 200,
    input_shape: list[int] | None = None,
    classes: int = 10,
) -> None:
    """What the worker's validation records for a good dataset."""
    with transaction(server.sessions) as session:
        d = session.get(DatasetRecord, uuid.UUID(dataset_id))
        assert d is not None
        d.status = AssetStatus.ready
        d.samples = samples
        d.input_shape = input_shape or [1, 8, 8]
        d.classes = [str(c) for c in range(classes)]


def mark_teacher(server: Server, teacher_id: str, status: AssetStatus, error: str = "") -> None:
    with transaction(server.sessions) as session:
        t = session.get(Teacher, uuid.UUID(teacher_id))
        assert t is not None
        t.status = status
        t.error = error or None


def update_job(server: Server, job_id: str, **fields: Any) -> None:
    with transaction(server.sessions) as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        for key, value in fields.items():
            setattr(job, key, value)


def add_artifact(server: Server, job_id: str, name: str, data: bytes) -> None:
    """A finished file of a job, as the worker stores it."""
    writer = server.store.writer(f"jobs/{job_id}/{name}")
    writer.write(data)
    obj = writer.commit()
    with transaction(server.sessions) as session:
        session.add(
            Artifact(
                job_id=uuid.UUID(job_id), name=name, uri=obj.uri, size=obj.size, sha256=obj.sha256
            )
        )


def student_spec() -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((DIGITS / "student.json").read_text())
    return spec


def scratch_config() -> dict[str, Any]:
    return {"method": "scratch", "epochs": 1, "batch_size": 16}


def report(method: str = "scratch") -> dict[str, Any]:
    """A report.json in the engine's shape (what ``print_report`` reads)."""
    student = {
        "accuracy": 0.9,
        "params": 1234,
        "macs": 5678,
        "size_bytes": 20_000,
        "latency_ms": 0.12,
    }
    return {"method": method, "data": {"eval_samples": 100}, "teacher": None, "student": student}


def succeed_with_artifacts(server: Server, job_id: str) -> dict[str, bytes]:
    """Finish a job the way the worker does: artifacts first, then the status."""
    files = {
        "report.json": json.dumps(report()).encode(),
        "student.safetensors": bytes(range(256)) * 4096,  # 1 MiB: more than one chunk
        "metrics.jsonl": b'{"step": 1, "loss": 0.5}\n',
    }
    for name, data in files.items():
        add_artifact(server, job_id, name, data)
    update_job(server, job_id, status=JobStatus.succeeded, progress=1.0)
    return files


def record_epochs(server: Server, job_id: str, epochs: list[dict[str, float]]) -> None:
    """One metric point per key of each epoch (steps 1, 2, ...), as the worker records them."""
    with transaction(server.sessions) as session:
        for step, values in enumerate(epochs, start=1):
            for key, value in values.items():
                session.add(MetricPoint(job_id=uuid.UUID(job_id), key=key, step=step, value=value))


class Wire(httpx.BaseTransport):
    """The in-process API's transport, recording requests; ``lose`` drops the response of
    the first n matching requests after the app handled them (a network failure)."""

    def __init__(self, server: Server, lose: dict[str, int] | None = None) -> None:
        self.inner = server.http._transport  # Starlette's transport into the running app
        self.lose = dict(lose or {})
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.inner.handle_request(request)
        what = f"{request.method} {request.url.path}"
        if self.lose.get(what):
            self.lose[what] -= 1
            response.read()
            raise httpx.ReadTimeout("response lost", request=request)
        return response


def client_over(transport: httpx.BaseTransport, api_key: str) -> KDServeClient:
    http = httpx.Client(transport=transport, base_url="http://testserver")
    kd = KDServeClient(api_key=api_key, http=http)
    kd._sleep = lambda _s: None
    return kd
