"""Opaque cursors over ``(created_at, id)``, newest first."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, TypeVar

from api.kit.errors import Invalid


def encode_cursor(created_at: datetime, id_: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{id_}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, id_ = raw.split("|")
        return datetime.fromisoformat(when), uuid.UUID(id_)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid("cursor is not one this API returned; start without one") from exc


class _Row(Protocol):
    created_at: datetime
    id: uuid.UUID


R = TypeVar("R", bound=_Row)


def split_page(rows: Sequence[R], limit: int) -> tuple[Sequence[R], str | None]:
    """Rows fetched with one extra (see ``store.repositories.common.page``) → the page and
    the cursor of the next one, if any."""
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last.created_at, last.id)
