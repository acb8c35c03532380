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

from store.models import AssetStatus, Blob, DatasetRecord, Teacher, utcnow


class AssetRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def teacher_with_blob(self, teacher_id: uuid.UUID) -> Teacher | None:
        return self.session.scalar(
            select(Teacher).options(joinedload(Teacher.blob)).where(Teacher.id == teacher_id)
        )

    def dataset_with_blob(self, dataset_id: uuid.UUID) -> DatasetRecord | None:
        return self.session.scalar(
            select(DatasetRecord)
            .options(joinedload(DatasetRecord.blob))
            .where(DatasetRecord.id == dataset_id)
        )

    def finish_teacher(self, teacher_id: uuid.UUID, **values: Any) -> bool:
        """Write the validation result if the teacher is still ``validating``."""
        return self._finish(Teacher, teacher_id, values)

    def finish_dataset(self, dataset_id: uuid.UUID, **values: Any) -> bool:
        """Write the validation result if the dataset is still ``validating``."""
        return self._finish(DatasetRecord, dataset_id, values)

    def stale_validating(
        self, model: type[Teacher] | type[DatasetRecord], *, before: datetime, limit: int = 100
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
        model: type[Teacher] | type[DatasetRecord],
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

    def release_blob(
        self, model: type[Teacher] | type[DatasetRecord], row_id: uuid.UUID
    ) -> str | None:
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
            select(
                or_(
                    exists().where(Teacher.blob_id == blob_id),
                    exists().where(DatasetRecord.blob_id == blob_id),
                )
            )
        )
        if shared:
            return None
        uri = self.session.scalar(select(Blob.uri).where(Blob.id == blob_id))
        self.session.execute(delete(Blob).where(Blob.id == blob_id))
        return uri

    def _finish(
        self, model: type[Teacher] | type[DatasetRecord], row_id: uuid.UUID, values: dict[str, Any]
    ) -> bool:
        stmt = (
            update(model)
            .where(model.id == row_id, model.status == AssetStatus.validating)
            .values(updated_at=utcnow(), **values)
        )
        result = self.session.execute(stmt, execution_options={"synchronize_session": False})
        return bool(cast(CursorResult[Any], result).rowcount)
