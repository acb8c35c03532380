from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapSerializer,
    WrapValidator,
)

from api.kit.schemas import PLAIN_TEXT
from kdcore.contract import ArchSpec, DistillConfig
from store.models import JobStatus


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher_id: uuid.UUID | None = Field(default=None, description="null for method scratch")
    dataset_id: uuid.UUID
    val_dataset_id: uuid.UUID | None = None
    student: ArchSpec = Field(description="architecture spec of the student")
    config: DistillConfig = Field(description="training config (method, epochs, ...)")
    name: str | None = Field(default=None, max_length=200, pattern=PLAIN_TEXT)


def _as_stored(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A stored spec that today's contract refuses is shown as stored: it passed the contract
    of its day (a later release may have narrowed a range), and reading a job must not fail
    for that. New requests are parsed by the strict types (:class:`JobCreate`)."""
    try:
        return handler(value)
    except ValidationError:
        return value


def _dump_stored(value: Any, handler: SerializerFunctionWrapHandler) -> Any:
    return value if isinstance(value, dict) else handler(value)


_STORED = (WrapValidator(_as_stored), WrapSerializer(_dump_stored))
StoredArch = Annotated[ArchSpec, *_STORED]
StoredConfig = Annotated[DistillConfig, *_STORED]


StoredJobCreate = Annotated[JobCreate, *_STORED]  # a sweep's base, as stored


class JobError(BaseModel):
    code: str
    message: str


class JobPublic(BaseModel):
    id: uuid.UUID
    name: str
    status: JobStatus
    method: str
    teacher_id: uuid.UUID | None
    dataset_id: uuid.UUID
    val_dataset_id: uuid.UUID | None
    student: StoredArch
    config: StoredConfig
    stage: str | None
    epoch: int | None
    progress: float
    metrics: dict[str, Any]
    choices: dict[str, Any] = Field(
        description="automatic choices resolved before training (what each 'auto' became)"
    )
    sweep_id: uuid.UUID | None = Field(description="the sweep this job is a point of, if any")
    error: JobError | None
    warnings: list[str] = Field(
        description="what a succeeded job could not do but did not fail for, e.g. an export "
        "format left out and why (also in report.json)"
    )
    attempts: int
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None


class MetricPointOut(BaseModel):
    step: int
    value: float
    time: datetime


class JobMetrics(BaseModel):
    series: dict[str, list[MetricPointOut]]


class ArtifactPublic(BaseModel):
    name: str
    size: int
    sha256: str
    url: str


class ArtifactList(BaseModel):
    items: list[ArtifactPublic]


class EventPublic(BaseModel):
    """One event of a job: a state change (`status`, `data.error`), an epoch's metrics
    (`data.stage`, `epoch`, `step`, `progress`, `metrics`) or the final report (`data.metrics`,
    `choices`, `warnings`, `artifacts`)."""

    id: int = Field(description="the event's number in its job: 1, 2, ... without gaps")
    kind: Literal["state", "epoch", "report"]
    status: JobStatus | None = Field(description="state events: the job's new status")
    data: dict[str, Any]
    created_at: datetime


class EventList(BaseModel):
    items: list[EventPublic]
    next_after: int | None = Field(
        description="pass as `after` for the next page; null: these are all the events "
        "written so far"
    )
