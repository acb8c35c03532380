"""The SQL of validating uploaded teachers and datasets.

An upload starts in ``validating``; one worker task moves it to ``ready`` or ``invalid``.
The final write is guarded by ``status = 'validating'``, so a redelivered task that runs
twice (or concurrently) writes once.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, exists, or_, select, update
from sqlalchemy.orm import Session, joinedload

from store.models import AssetStatus, Blob, utcnow
from store.repositories.catalog import UPLOADS, Upload, UploadModel


class AssetRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def with_blob(self, model: type[Upload], row_id: uuid.UUID) -> Upload | None:
        """An upload of any tenant, deleted or not, with its file loaded."""
        return self.session.scalar(
            select(model).options(joinedload(model.blob)).where(model.id == row_id)
        )

    def finish(self, model: UploadModel, row_id: uuid.UUID, **values: Any) -> bool:
        """Write the validation result if the upload is still ``validating``."""
        stmt = (
            update(model)
            .where(model.id == row_id, model.status == AssetStatus.validating)
            .values(updated_at=utcnow(), **values)
        )
        result = self.session.execute(stmt, execution_options={"synchronize_session": False})
        return bool(cast(CursorResult[Any], result).rowcount)

    def stale_validating(
        self, model: UploadModel, *, before: datetime, limit: int = 100
    ) -> list[uuid.UUID]:
        """Uploads still ``validating`` and untouched since ``before``: their validation
        message may have been lost."""
        return list(
            self.session.scalars(
                select(model.id)
                .where(model.status == AssetStatus.validating, model.updated_at < before)
                .order_by(model.updated_at)
                .limit(limit)
            )
        )

    def touch_validating(
        self,
        model: UploadModel,
        row_id: uuid.UUID,
        *,
        before: datetime,
        now: datetime,
    ) -> bool:
        """Restart an upload's clock before its message is sent again (compare-and-set)."""
        stmt = (
            update(model)
            .where(
                model.id == row_id,
                model.status == AssetStatus.validating,
                model.updated_at < before,
            )
            .values(updated_at=now)
        )
        result = self.session.execute(stmt, execution_options={"synchronize_session": False})
        return bool(cast(CursorResult[Any], result).rowcount)

    def release_blob(self, model: UploadModel, row_id: uuid.UUID) -> str | None:
        """Detach an invalid upload from its file; returns the file's URI when nothing else
        uses it (the Blob row is deleted then, and the caller deletes the object after the
        commit), or None when another teacher or dataset shares it."""
        blob_id = self.session.scalar(select(model.blob_id).where(model.id == row_id))
        if blob_id is None:
            return None
        self.session.execute(
            update(model).where(model.id == row_id).values(blob_id=None),
            execution_options={"synchronize_session": False},
        )
        shared = self.session.scalar(
            select(or_(*(exists().where(m.blob_id == blob_id) for m in UPLOADS)))
        )
        if shared:
            return None
        uri = self.session.scalar(select(Blob.uri).where(Blob.id == blob_id))
        self.session.execute(delete(Blob).where(Blob.id == blob_id))
        return uri
