from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field


class CacheEntryPublic(BaseModel):
    id: uuid.UUID
    key: str = Field(description="sha256 of everything that changes the teacher's outputs")
    size: int = Field(description="bytes in storage")
    hits: int = Field(description="how many jobs read it after the one that built it")
    last_used_at: datetime
    created_at: datetime


class CacheEntryList(BaseModel):
    items: list[CacheEntryPublic]
    next_cursor: str | None
