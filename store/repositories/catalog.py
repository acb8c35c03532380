"""Teachers and datasets of a tenant: one repository for both uploads, specialised by model.
Every query is scoped to the tenant: another tenant's id finds nothing."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Generic, TypeVar

from sqlalchemy import Exists, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from store.models import AssetStatus, Blob, DatasetRecord, Teacher, utcnow
from store.repositories.common import page

# The models with the upload lifecycle: a deduplicated file, a validation status, soft delete.
UPLOADS = (Teacher, DatasetRecord)
Upload = TypeVar("Upload", Teacher, DatasetRecord)
UploadModel = type[Teacher] | type[DatasetRecord]


class UploadRepository(Generic[Upload]):
    """A tenant's uploads of one kind, newest first; deleted ones are hidden."""

    model: type[Upload]  # each subclass names its model

    def __init__(self, session: Session, tenant_id: uuid.UUID) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def get(self, row_id: uuid.UUID, *, deleted: bool = False) -> Upload | None:
        """The tenant's upload ``row_id``; ``deleted``: a deleted one too (its row is kept for
        the jobs that used it)."""
        model = self.model
        q = select(model).options(joinedload(model.blob))
        q = q.where(model.id == row_id, model.tenant_id == self.tenant_id)
        if not deleted:
            q = q.where(model.deleted_at.is_(None))
        return self.session.scalars(q).first()

    def list_page(self, *, after: tuple[datetime, uuid.UUID] | None, limit: int) -> list[Upload]:
        model = self.model
        q = (
            select(model)
            .options(joinedload(model.blob))
            .where(model.tenant_id == self.tenant_id, model.deleted_at.is_(None))
        )
        return list(self.session.scalars(page(q, model, after=after, limit=limit)))

    def add(self, row: Upload) -> Upload:
        self.session.add(row)
        self.session.flush()
        return row

    def delete(self, row: Upload) -> None:
        """Hide the upload; the row stays for the jobs that used it."""
        row.deleted_at = utcnow()


class TeacherRepository(UploadRepository[Teacher]):
    model = Teacher


class DatasetRepository(UploadRepository[DatasetRecord]):
    model = DatasetRecord


def find_or_add_blob(
    session: Session, tenant_id: uuid.UUID, *, uri: str, size: int, sha256: str
) -> tuple[Blob, bool]:
    """The tenant's blob with this sha256, added for ``uri`` if it has none yet; the flag
    says whether it was added. Identical bytes that arrive concurrently share the first."""
    existing = _blob(session, tenant_id, sha256)
    if existing is not None:
        return existing, False
    blob = Blob(tenant_id=tenant_id, uri=uri, size=size, sha256=sha256)
    try:
        with session.begin_nested():
            session.add(blob)
    except IntegrityError:  # (tenant_id, sha256) is unique: another request added it first
        existing = _blob(session, tenant_id, sha256)
        if existing is None:
            raise
        return existing, False
    return blob, True


def _blob(session: Session, tenant_id: uuid.UUID, sha256: str) -> Blob | None:
    return session.scalars(
        select(Blob).where(Blob.tenant_id == tenant_id, Blob.sha256 == sha256)
    ).first()


def stored_bytes(session: Session, tenant_id: uuid.UUID) -> int:
    """Bytes the tenant's quota counts: each blob once (uploads are deduplicated), if a
    teacher or dataset that is neither deleted nor invalid refers to it."""

    def used_by(model: UploadModel) -> Exists:
        return exists().where(
            model.blob_id == Blob.id,
            model.deleted_at.is_(None),
            model.status != AssetStatus.invalid,
        )

    total = session.scalar(
        select(func.coalesce(func.sum(Blob.size), 0)).where(
            Blob.tenant_id == tenant_id, or_(*(used_by(m) for m in UPLOADS))
        )
    )
    return int(total or 0)
