from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    student: ArchSpec
    config: DistillConfig
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
