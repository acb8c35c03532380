"""Datasets: register an upload, queue its validation."""

from __future__ import annotations

from pathlib import PurePosixPath

from sqlalchemy.orm import Session

from api.kit.catalog import Catalog
from api.kit.errors import UnsupportedMediaType
from api.kit.schemas import plain_text
from api.kit.uploads import record_blob
from store.blobs import BlobStore, StoredObject
from store.models import DatasetRecord, Tenant
from store.queue import VALIDATE_DATASET
from store.repositories.catalog import DatasetRepository
from store.settings import Settings

from .schemas import DatasetList, DatasetPublic

catalog = Catalog(
    what="dataset",
    repository=DatasetRepository,
    public=DatasetPublic,
    page=DatasetList,
    task=VALIDATE_DATASET,
)

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
    tenant: Tenant,
    *,
    store: BlobStore,
    settings: Settings,
    obj: StoredObject,
    filename: str,
    name: str,
) -> DatasetRecord:
    row = DatasetRecord(tenant_id=tenant.id, name=name or filename, filename=filename)
    return catalog.add(session, settings, row, record_blob(session, store, tenant, obj))
