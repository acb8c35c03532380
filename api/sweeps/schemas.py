from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.jobs.schemas import ArtifactPublic, JobCreate, JobError, StoredJobCreate
from api.kit.schemas import PLAIN_TEXT
from kdcore.contract import HintConfig
from store.models import JobStatus

SweepMetric = Literal["val_accuracy", "val_nll"]
# Values of one grid field: far more than a sweep may have points (its limit is a setting,
# KDSERVE_MAX_SWEEP_POINTS_PER_TENANT), so that the grid's own checks stay bounded.
MAX_GRID_VALUES = 1_000


class SweepGrid(BaseModel):
    """The values a sweep tries: every combination of the fields given (their cartesian
    product), each set on the base job's config. A field left out keeps the base's value."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    temperature: list[float] | None = Field(
        default=None, min_length=1, max_length=MAX_GRID_VALUES, description="config.temperature"
    )
    alpha: list[float] | None = Field(
        default=None, min_length=1, max_length=MAX_GRID_VALUES, description="config.alpha"
    )
    lr: list[float] | None = Field(
        default=None, min_length=1, max_length=MAX_GRID_VALUES, description="config.lr"
    )
    hint: list[HintConfig] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_GRID_VALUES,
        description="config.hint (FitNets layer pairs); fields left out of one keep the base "
        "hint's values",
    )
    hint_epochs: list[int] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_GRID_VALUES,
        description="config.hint.epochs (FitNets stage 1)",
    )
    seed: list[int] | None = Field(
        default=None, min_length=1, max_length=MAX_GRID_VALUES, description="config.seed"
    )

    @field_validator("*")
    @classmethod
    def _each_value_once(cls, values: list[Any] | None) -> list[Any] | None:
        seen: set[Any] = set()
        for v in values or []:
            key = (
                json.dumps(v.model_dump(mode="json", exclude_unset=True), sort_keys=True)
                if isinstance(v, BaseModel)
                else v
            )
            if key in seen:
                raise ValueError(f"{key} is listed twice; list each value once")
            seen.add(key)
        return values


class SweepCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: JobCreate = Field(description="the job every point starts from (as POST /v1/jobs)")
    grid: SweepGrid
    metric: SweepMetric = Field(
        default="val_accuracy",
        description="what ranks the points: the best epoch's val_accuracy (higher is better) "
        "or val_nll (lower is better)",
    )
    scratch: bool = Field(
        default=False,
        description="add a method-scratch point per seed (no teacher): what distillation bought",
    )
    name: str | None = Field(default=None, max_length=200, pattern=PLAIN_TEXT)


class SweepPoint(BaseModel):
    index: int = Field(description="the point's place in the grid's order")
    job_id: uuid.UUID
    overrides: dict[str, Any] = Field(description="what this point sets on the base config")
    status: JobStatus
    progress: float
    val_accuracy: float | None = Field(description="of the best epoch of the final stage")
    val_nll: float | None = Field(description="of the best epoch of the final stage")
    best_epoch: int | None = Field(description="that epoch, counted in the final stage")
    error: JobError | None


class SweepCounts(BaseModel):
    queued: int
    running: int
    succeeded: int
    failed: int
    canceled: int


class SweepPublic(BaseModel):
    id: uuid.UUID
    name: str
    status: JobStatus = Field(
        description="queued, running, then succeeded once every point is final and one "
        "succeeded; else failed, or canceled when a point was canceled"
    )
    metric: SweepMetric
    base: StoredJobCreate
    grid: dict[str, Any] = Field(description="the grid as sent (a SweepGrid)")
    scratch: bool
    counts: SweepCounts
    best_job_id: uuid.UUID | None = Field(description="the top of the leaderboard")
    points: list[SweepPoint] = Field(description="in the grid's order")
    leaderboard: list[SweepPoint] = Field(
        description="the succeeded points, best first by the sweep's metric"
    )
    created_at: datetime
    updated_at: datetime


class SweepList(BaseModel):
    items: list[SweepPublic]
    next_cursor: str | None


class SweepArtifactList(BaseModel):
    job_id: uuid.UUID = Field(description="the best point's job, whose artifacts these are")
    items: list[ArtifactPublic]
