from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel

from store.models import AssetStatus


class DatasetPublic(BaseModel):
    id: uuid.UUID
    name: str
    filename: str
    status: AssetStatus
    error: str | None
    samples: int | None
    input_shape: list[int] | None
    classes: list[str] | None
    # Null once validation found the upload invalid and deleted the file.
    size: int | None
    sha256: str | None
    created_at: datetime
    updated_at: datetime


class DatasetList(BaseModel):
    items: list[DatasetPublic]
    next_cursor: str | None
