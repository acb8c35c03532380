"""Teachers and datasets of a tenant. Every query is scoped to the tenant: another
tenant's id finds nothing."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Exists, exists, func, or_, select
from sqlalchemy.orm import Session, joinedload

from store.models import AssetStatus, Blob, DatasetRecord, Teacher, utcnow
from store.repositories.common import page


@dataclass
class TeacherRepository:
    session: Session
    tenant_id: uuid.UUID

    def get(self, teacher_id: uuid.UUID) -> Teacher | None:
        return self.session.scalars(
            select(Teacher)
            .options(joinedload(Teacher.blob))
            .where(
                Teacher.id == teacher_id,
                Teacher.tenant_id == self.tenant_id,
                Teacher.deleted_at.is_(None),
            )
        ).first()

    def list_page(self, *, after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[Teacher]:
        q = (
            select(Teacher)
            .options(joinedload(Teacher.blob))
            .where(Teacher.tenant_id == self.tenant_id, Teacher.deleted_at.is_(None))
        )
        return list(self.session.scalars(page(q, Teacher, after=after, limit=limit)))

    def add(self, teacher: Teacher) -> Teacher:
        self.session.add(teacher)
        self.session.flush()
        return teacher

    def delete(self, teacher: Teacher) -> None:
        teacher.deleted_at = utcnow()


@dataclass
class DatasetRepository:
    session: Session
    tenant_id: uuid.UUID

    def get(self, dataset_id: uuid.UUID) -> DatasetRecord | None:
        return self.session.scalars(
            select(DatasetRecord)
            .options(joinedload(DatasetRecord.blob))
            .where(
                DatasetRecord.id == dataset_id,
                DatasetRecord.tenant_id == self.tenant_id,
                DatasetRecord.deleted_at.is_(None),
            )
        ).first()

    def list_page(
        self, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[DatasetRecord]:
        q = (
            select(DatasetRecord)
            .options(joinedload(DatasetRecord.blob))
            .where(DatasetRecord.tenant_id == self.tenant_id, DatasetRecord.deleted_at.is_(None))
        )
        return list(self.session.scalars(page(q, DatasetRecord, after=after, limit=limit)))

    def add(self, dataset: DatasetRecord) -> DatasetRecord:
        self.session.add(dataset)
        self.session.flush()
        return dataset

    def delete(self, dataset: DatasetRecord) -> None:
        dataset.deleted_at = utcnow()


def stored_bytes(session: Session, tenant_id: uuid.UUID) -> int:
    """Bytes the tenant's quota counts: each blob once (uploads are deduplicated), if a
    teacher or dataset that is neither deleted nor invalid refers to it."""

    def used_by(model: type[Teacher] | type[DatasetRecord]) -> Exists:
        return exists().where(
            model.blob_id == Blob.id,
            model.deleted_at.is_(None),
            model.status != AssetStatus.invalid,
        )

    total = session.scalar(
        select(func.coalesce(func.sum(Blob.size), 0)).where(
            Blob.tenant_id == tenant_id, or_(used_by(Teacher), used_by(DatasetRecord))
        )
    )
    return int(total or 0)
