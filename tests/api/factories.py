"""Rows for API tests, with overridable fields (``create_job(session, **overrides)``)."""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from store.blobs import BlobStore
from store.models import AssetStatus, Blob, DatasetRecord, Job, Teacher
from store.repositories.tenants import TenantRepository


@dataclass
class Tenancy:
    id: uuid.UUID
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_tenant(sessions: sessionmaker[Session], name: str) -> Tenancy:
    with sessions() as s, s.begin():
        repo = TenantRepository(s)
        tenant = repo.get_or_create(name)
        return Tenancy(tenant.id, repo.create_key(tenant))


def npz_bytes(n: int = 40, classes: int = 4, shape: tuple[int, ...] = (1, 8, 8)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, x=rng.integers(0, 255, (n, *shape), dtype=np.uint8), y=np.arange(n) % classes)
    return buf.getvalue()


def create_blob(
    s: Session, tenant_id: uuid.UUID, *, store: BlobStore | None = None, data: bytes = b"weights"
) -> Blob:
    sha = hashlib.sha256(data + uuid.uuid4().bytes).hexdigest()
    uri = "file:///nowhere"
    if store is not None:
        w = store.writer(f"tenants/{tenant_id}/blobs/{uuid.uuid4()}")
        w.write(data)
        obj = w.commit()
        uri, sha = obj.uri, obj.sha256
    blob = Blob(tenant_id=tenant_id, uri=uri, size=len(data), sha256=sha)
    s.add(blob)
    s.flush()
    return blob


def create_dataset(s: Session, tenant_id: uuid.UUID, **overrides: Any) -> DatasetRecord:
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "name": "d",
        "filename": "d.npz",
        "blob_id": create_blob(s, tenant_id).id,
        "status": AssetStatus.ready,
        "samples": 400,
        "input_shape": [1, 8, 8],
        "classes": [str(i) for i in range(4)],
    } | overrides
    row = DatasetRecord(**fields)
    s.add(row)
    s.flush()
    return row


STUDENT_LAYERS = [{"path": p, "shape": [4, 8, 8]} for p in ("conv1", "bn1", "relu1")]


def create_teacher(s: Session, tenant_id: uuid.UUID, **overrides: Any) -> Teacher:
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "name": "t",
        "blob_id": create_blob(s, tenant_id).id,
        "arch": {"family": "mlp", "hidden": [16]},
        "input_shape": [1, 8, 8],
        "num_classes": 4,
        "status": AssetStatus.ready,
        "format": "safetensors",
        "params": 100,
        "macs": 100,
        "layers": [
            {"path": "fc1", "shape": [16]},
            {"path": "relu1", "shape": [16]},
            {"path": "head", "shape": [4]},
        ],
    } | overrides
    row = Teacher(**fields)
    s.add(row)
    s.flush()
    return row


def create_job(s: Session, tenant_id: uuid.UUID, **overrides: Any) -> Job:
    dataset_id = overrides.pop("dataset_id", None) or create_dataset(s, tenant_id).id
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "dataset_id": dataset_id,
        "student": {"family": "mlp", "hidden": [8]},
        "config": {"method": "scratch"},
        "method": "scratch",
        "metrics": {},
    } | overrides
    row = Job(**fields)
    s.add(row)
    s.flush()
    return row
