"""Rows and stored files for worker tests (``create_job(session, **overrides)``), and
:class:`Env`, which calls the task code the way the Celery wrappers do."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import save as safetensors_save
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker
from torch import nn

from kdcore.contract import Spec
from kdcore.data import Dataset
from kdcore.models import build_model
from store.blobs import BlobStore
from store.db import transaction
from store.models import (
    Artifact,
    AssetStatus,
    Blob,
    DatasetRecord,
    Job,
    MetricPoint,
    Teacher,
    Tenant,
)
from store.settings import Settings
from tests.kdcore.factories import cnn, config, image_data
from worker.retry import NO_WAIT
from worker.runner import Outcome, run_job

T = TypeVar("T")

SHAPE = [3, 8, 8]
CLASSES = 4
TEACHER_ARCH = cnn(16)


@dataclass(frozen=True)
class Db:
    url: str
    engine: Engine
    sessions: sessionmaker[Session]


@dataclass(frozen=True)
class Env:
    settings: Settings
    sessions: sessionmaker[Session]
    store: BlobStore

    def run(self, job_id: uuid.UUID, *, formats: tuple[str, ...] = ("safetensors",)) -> Outcome:
        return run_job(
            str(job_id),
            settings=self.settings,
            sessions=self.sessions,
            store=self.store,
            formats=formats,
            retries=NO_WAIT,
        )

    def add(self, fn: Callable[[Session], T]) -> T:
        with transaction(self.sessions) as s:
            return fn(s)

    def job(self, job_id: uuid.UUID) -> Job:
        with self.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            return job

    def update_job(self, job_id: uuid.UUID, **values: Any) -> None:
        with transaction(self.sessions) as s:
            s.execute(update(Job).where(Job.id == job_id).values(**values))

    def artifacts(self, job_id: uuid.UUID) -> dict[str, Artifact]:
        with self.sessions() as s:
            rows = s.scalars(select(Artifact).where(Artifact.job_id == job_id))
            return {a.name: a for a in rows}

    def points(self, job_id: uuid.UUID) -> list[MetricPoint]:
        with self.sessions() as s:
            return list(
                s.scalars(
                    select(MetricPoint)
                    .where(MetricPoint.job_id == job_id)
                    .order_by(MetricPoint.step, MetricPoint.key)
                )
            )

    def read(self, uri: str) -> bytes:
        return b"".join(self.store.iter_bytes(uri))


def npz_bytes(data: Dataset) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=data.x.numpy(), y=data.y.numpy(), classes=np.array(data.classes))
    return buf.getvalue()


def state_dict_bytes(model: nn.Module, *, fmt: str = "safetensors") -> bytes:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        return safetensors_save(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def teacher_model(arch: Spec = TEACHER_ARCH, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, tuple(SHAPE), CLASSES)


def create_tenant(s: Session, **overrides: Any) -> Tenant:
    row = Tenant(**({"name": f"tenant-{uuid.uuid4().hex[:8]}"} | overrides))
    s.add(row)
    s.flush()
    return row


def create_blob(s: Session, store: BlobStore, tenant_id: uuid.UUID, content: bytes) -> Blob:
    blob_id = uuid.uuid4()
    writer = store.writer(f"tenants/{tenant_id}/blobs/{blob_id}")
    writer.write(content)
    obj = writer.commit()
    row = Blob(id=blob_id, tenant_id=tenant_id, uri=obj.uri, size=obj.size, sha256=obj.sha256)
    s.add(row)
    s.flush()
    return row


def create_dataset(
    s: Session,
    store: BlobStore,
    tenant_id: uuid.UUID,
    *,
    content: bytes | None = None,
    **overrides: Any,
) -> DatasetRecord:
    """A ready dataset (``status=validating`` to validate it) of :func:`image_data`."""
    data = image_data(classes=CLASSES, shape=(3, 8, 8))
    blob = create_blob(s, store, tenant_id, npz_bytes(data) if content is None else content)
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "name": "images",
        "filename": "train.npz",
        "blob_id": blob.id,
        "status": AssetStatus.ready,
        "samples": len(data),
        "input_shape": SHAPE,
        "classes": data.classes,
    } | overrides
    row = DatasetRecord(**fields)
    s.add(row)
    s.flush()
    return row


def create_teacher(
    s: Session,
    store: BlobStore,
    tenant_id: uuid.UUID,
    *,
    content: bytes | None = None,
    **overrides: Any,
) -> Teacher:
    """A ready teacher (``status=validating`` to validate it): an untrained ``cnn(16)``."""
    weights = state_dict_bytes(teacher_model()) if content is None else content
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "name": "teacher",
        "blob_id": create_blob(s, store, tenant_id, weights).id,
        "arch": TEACHER_ARCH.model_dump(mode="json"),
        "input_shape": SHAPE,
        "num_classes": CLASSES,
        "status": AssetStatus.ready,
    } | overrides
    row = Teacher(**fields)
    s.add(row)
    s.flush()
    return row


def create_job(s: Session, *, tenant_id: uuid.UUID, dataset_id: uuid.UUID, **overrides: Any) -> Job:
    """A queued job: ``scratch`` training of ``cnn(4)`` for 2 epochs on CPU by default."""
    cfg = overrides.pop("config", None) or config(epochs=2)
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "dataset_id": dataset_id,
        "student": cnn(4).model_dump(mode="json"),
        "config": cfg,
        "method": cfg["method"],
        "metrics": {},
    } | overrides
    row = Job(**fields)
    s.add(row)
    s.flush()
    return row


@dataclass(frozen=True)
class World:
    """A tenant with a training dataset and a teacher."""

    tenant_id: uuid.UUID
    dataset_id: uuid.UUID
    teacher_id: uuid.UUID

    def job(self, env: Env, **overrides: Any) -> uuid.UUID:
        ids = {"tenant_id": self.tenant_id, "dataset_id": self.dataset_id}
        return env.add(lambda s: create_job(s, **(ids | overrides)).id)


def create_world(env: Env) -> World:
    def build(s: Session) -> World:
        tenant = create_tenant(s)
        dataset = create_dataset(s, env.store, tenant.id)
        teacher = create_teacher(s, env.store, tenant.id)
        return World(tenant.id, dataset.id, teacher.id)

    return env.add(build)
