from __future__ import annotations

from pathlib import PurePosixPath

from sqlalchemy.orm import Session

from api.kit.deps import defer_task
from api.kit.errors import UnsupportedMediaType
from api.kit.schemas import plain_text
from api.kit.uploads import record_blob
from store.blobs import BlobStore, StoredObject
from store.models import DatasetRecord, Tenant
from store.queue import VALIDATE_DATASET
from store.repositories.catalog import DatasetRepository

from .schemas import DatasetPublic

SUFFIXES = (".npz", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def check_filename(filename: str | None) -> str:
    """A safe base name with a supported suffix (the loader picks the format by it)."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    if not name.lower().endswith(SUFFIXES):
        raise UnsupportedMediaType(
            f"dataset file {filename!r} is not a supported format; send .npz (arrays x, y) or "
            f"an image-folder archive ({', '.join(SUFFIXES[1:])})"
        )
    return plain_text(name[-255:], "filename", 255)


def create(
    session: Session,
    store: BlobStore,
    *,
    tenant: Tenant,
    obj: StoredObject,
    filename: str,
    name: str,
) -> DatasetRecord:
    blob = record_blob(session, store, tenant, obj)
    dataset = DatasetRepository(session, tenant.id).add(
        DatasetRecord(
            tenant_id=tenant.id, name=name or filename, filename=filename, blob_id=blob.id
        )
    )
    dataset.blob = blob
    defer_task(session, VALIDATE_DATASET, [str(dataset.id)])
    return dataset


def to_public(d: DatasetRecord) -> DatasetPublic:
    return DatasetPublic(
        id=d.id,
        name=d.name,
        filename=d.filename,
        status=d.status,
        error=d.error,
        samples=d.samples,
        input_shape=d.input_shape,
        classes=d.classes,
        size=d.blob.size if d.blob else None,
        sha256=d.blob.sha256 if d.blob else None,
        created_at=d.created_at,
        updated_at=d.updated_at,
    )
