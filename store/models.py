"""Database models (SQLAlchemy 2.0, typed). Bytes never live here: blobs hold URI, size and
sha256 of what object storage keeps."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend: SQLite drops the zone on the way back, so naive
    values read from it are marked UTC (they were written as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


NAMING = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AssetStatus(enum.StrEnum):
    """Teachers and datasets: checked by a worker after upload."""

    validating = "validating"
    ready = "ready"
    invalid = "invalid"


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def final(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


def _enum(cls: type[enum.StrEnum]) -> Enum:
    # Stored as plain strings (checked in Python): portable between Postgres and SQLite, and
    # adding a value needs no ALTER TYPE.
    return Enum(
        cls,
        native_enum=False,
        length=16,
        validate_strings=True,
        values_callable=lambda e: [m.value for m in e],
    )


class Tenant(Timestamps, Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    max_running_jobs: Mapped[int | None] = mapped_column(Integer)  # None: the global default
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger)


class ApiKey(Timestamps, Base):
    """A bearer key: ``kds_<prefix>_<secret>``. Only the SHA-256 of the whole key is kept."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100), default="")
    revoked_at: Mapped[datetime | None] = mapped_column()

    tenant: Mapped[Tenant] = relationship(lazy="raise")


class UploadSlot(Base):
    """An upload in progress: taken under the tenant's row lock before the body is read, so
    the tenant's concurrent uploads are counted atomically; deleted when the upload ends.
    ``expires_at`` is pushed forward while bytes arrive; a slot past it (its API process was
    killed) no longer counts."""

    __tablename__ = "upload_slots"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    expires_at: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Blob(Base):
    """An object in storage, owned by a tenant; uploads are deduplicated by sha256."""

    __tablename__ = "blobs"
    __table_args__ = (UniqueConstraint("tenant_id", "sha256"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    uri: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Teacher(Timestamps, Base):
    __tablename__ = "teachers"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200), default="")
    # None once validation found the upload invalid and deleted its file.
    blob_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("blobs.id"))
    arch: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    input_shape: Mapped[list[Any]] = mapped_column(JSON)
    num_classes: Mapped[int] = mapped_column(Integer)
    status: Mapped[AssetStatus] = mapped_column(_enum(AssetStatus), default=AssetStatus.validating)
    error: Mapped[str | None] = mapped_column(Text)
    format: Mapped[str | None] = mapped_column(String(32))
    layers: Mapped[list[Any] | None] = mapped_column(JSON)  # [{path, shape}]
    params: Mapped[int | None] = mapped_column(BigInteger)
    macs: Mapped[int | None] = mapped_column(BigInteger)
    source_job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    deleted_at: Mapped[datetime | None] = mapped_column()  # hidden, kept for jobs' history

    blob: Mapped[Blob | None] = relationship(lazy="raise")


class DatasetRecord(Timestamps, Base):
    __tablename__ = "datasets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200), default="")
    filename: Mapped[str] = mapped_column(String(255), default="")
    # None once validation found the upload invalid and deleted its file.
    blob_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("blobs.id"))
    status: Mapped[AssetStatus] = mapped_column(_enum(AssetStatus), default=AssetStatus.validating)
    error: Mapped[str | None] = mapped_column(Text)
    samples: Mapped[int | None] = mapped_column(Integer)
    input_shape: Mapped[list[Any] | None] = mapped_column(JSON)
    classes: Mapped[list[Any] | None] = mapped_column(JSON)
    deleted_at: Mapped[datetime | None] = mapped_column()  # hidden, kept for jobs' history

    blob: Mapped[Blob | None] = relationship(lazy="raise")


class Sweep(Timestamps, Base):
    """A hyper-parameter sweep: one job per point of a grid over a base job. Its status is
    derived from its points' jobs (``jobs.sweep_id``); ``points`` lists them in the grid's
    order, each as ``{"job_id", "overrides"}``, written once with the jobs."""

    __tablename__ = "sweeps"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_sweeps_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # sha256 of the request that used the key (api/kit/idempotency.py); NULL on older rows.
    request_hash: Mapped[str | None] = mapped_column(String(64))
    base: Mapped[dict[str, Any]] = mapped_column(JSON)  # the job body every point starts from
    grid: Mapped[dict[str, Any]] = mapped_column(JSON)
    metric: Mapped[str] = mapped_column(String(16))
    scratch: Mapped[bool] = mapped_column(Boolean, default=False)
    points: Mapped[list[Any]] = mapped_column(JSON)


class Job(Timestamps, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status_heartbeat", "status", "heartbeat_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), default="")
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))  # as Sweep.request_hash
    teacher_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("teachers.id"))
    dataset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("datasets.id"))
    val_dataset_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("datasets.id"))
    student: Mapped[dict[str, Any]] = mapped_column(JSON)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    method: Mapped[str] = mapped_column(String(16))
    sweep_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("sweeps.id"), index=True)
    # Automatic choices resolved before training ("auto" settings), as the worker records them.
    choices: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=dict)

    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), default=JobStatus.queued)
    stage: Mapped[str | None] = mapped_column(String(16))
    epoch: Mapped[int | None] = mapped_column(Integer)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # latest values
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    # What a succeeded job could not do but did not fail for (report.json's "warnings": an
    # export format left out); NULL on older rows, read as [].
    warnings: Mapped[list[Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease: Mapped[str | None] = mapped_column(String(36))  # the running attempt's token
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


class MetricPoint(Base):
    """One value of one metric at one step: (job, key, step, value, time)."""

    __tablename__ = "metric_points"
    __table_args__ = (Index("ix_metric_points_job_key_step", "job_id", "key", "step"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobEvent(Base):
    """One event of a job, in order: a state change, an epoch's metrics, the final report.

    ``seq`` numbers a job's events 1, 2, ... with no gaps: each is written in the transaction
    that changes the job row, whose row lock serializes writers, so the next ``seq`` is the
    largest plus one. It is the event's id on the events endpoint and in server-sent
    events (``Last-Event-ID``). ``status`` repeats a state event's new status as a column, so
    that counting transitions needs no JSON operator.
    """

    __tablename__ = "job_events"
    __table_args__ = (
        UniqueConstraint("job_id", "seq"),
        Index("ix_job_events_kind_status", "kind", "status"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # "state", "epoch" or "report"
    status: Mapped[str | None] = mapped_column(String(16))  # state events: the new status
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    """A finished file of a job; a row exists only once its object is complete in storage."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    uri: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CacheEntry(Base):
    """A teacher-cache entry (``kdcore.cache``) a tenant's jobs share: one object in storage
    at ``tenants/<t>/cache/<key>.safetensors``. Its integrity is checked by the job that reads
    it (the sha256 inside the file); ``sha256`` here is the object's, as uploaded."""

    __tablename__ = "cache_entries"
    __table_args__ = (
        UniqueConstraint("tenant_id", "key"),
        Index("ix_cache_entries_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_cache_entries_last_used", "last_used_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    hits: Mapped[int] = mapped_column(Integer, default=0)
    last_used_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeliveryState(enum.StrEnum):
    pending = "pending"  # waiting for its next attempt (or in flight: ``lease`` is set)
    delivered = "delivered"  # the endpoint answered 2xx
    failed = "failed"  # no 2xx in ``webhook_max_attempts`` attempts; never tried again


class WebhookEndpoint(Timestamps, Base):
    """A URL a tenant registered to receive its jobs' final states (``worker/webhooks.py``).

    ``secret`` is the signing key as the tenant was shown it once (``whsec_`` + base64 of 32
    random bytes). It is kept as is, not hashed: HMAC signing needs the key itself.
    """

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        Index("ix_webhook_endpoints_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(String(200), default="")
    secret: Mapped[str] = mapped_column(String(100))


class WebhookDelivery(Base):
    """One final-state event of a job, to one endpoint of the job's tenant.

    The dispatcher creates it once per (endpoint, event) pair (the unique constraint: two
    dispatchers racing insert one row) with its body, so that every attempt sends the same
    bytes under the same ``webhook-id`` (this row's id). ``attempt_log`` records each attempt:
    ``{"at", "status_code", "error", "duration_ms"}``, at most ``webhook_max_attempts``.
    ``lease`` marks an attempt in flight; the dispatcher that took it is the only one whose
    result is recorded.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        Index("ix_webhook_deliveries_state_next", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    event_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("job_events.id", ondelete="CASCADE"),
    )
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(32))  # "job.succeeded", ...
    body: Mapped[str] = mapped_column(Text)  # the JSON sent, exactly
    state: Mapped[DeliveryState] = mapped_column(
        _enum(DeliveryState), default=DeliveryState.pending
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease: Mapped[str | None] = mapped_column(String(36))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    attempt_log: Mapped[list[Any]] = mapped_column(JSON, default=list)
    delivered_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
