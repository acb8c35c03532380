"""Query pieces shared by the tenant-scoped repositories."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_

T = TypeVar("T")


def page(
    query: Select[T], model: Any, *, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> Select[T]:
    """Newest first, keyset-paginated on (created_at, id); fetches one extra row to tell
    whether another page follows."""
    if after is not None:
        when, id_ = after
        query = query.where(
            or_(model.created_at < when, and_(model.created_at == when, model.id < id_))
        )
    return query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
