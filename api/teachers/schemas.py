from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.kit.schemas import PLAIN_TEXT
from store.models import AssetStatus


class LayerOut(BaseModel):
    path: str
    shape: list[int]


class TeacherFromJob(BaseModel):
    """Promote a finished job's student to a teacher."""

    model_config = ConfigDict(extra="forbid")

    from_job: uuid.UUID
    name: str | None = Field(default=None, max_length=200, pattern=PLAIN_TEXT)


class TeacherPublic(BaseModel):
    id: uuid.UUID
    name: str
    status: AssetStatus
    error: str | None
    format: str | None
    arch: dict[str, Any] | None
    input_shape: list[int]
    num_classes: int
    layers: list[LayerOut] | None
    params: int | None
    macs: int | None
    # Null once validation found the upload invalid and deleted the file.
    size: int | None
    sha256: str | None
    source_job_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class TeacherList(BaseModel):
    items: list[TeacherPublic]
    next_cursor: str | None
