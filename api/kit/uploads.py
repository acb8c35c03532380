"""Uploads stream into object storage chunk by chunk, hashed on the way, never held whole
in memory; an upload over the limit is cut off with 413 and leaves nothing behind."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.kit.errors import Invalid, PayloadTooLarge, Unavailable
from store.blobs import BlobStore, StorageError, StoredObject
from store.models import Blob, Tenant


async def stream_to_storage(
    chunks: AsyncIterator[bytes], *, store: BlobStore, tenant_id: uuid.UUID, limit: int
) -> StoredObject:
    writer = store.writer(f"tenants/{tenant_id}/blobs/{uuid.uuid4()}")
    try:
        async for chunk in chunks:
            if writer.size + len(chunk) > limit:
                raise PayloadTooLarge(
                    f"the upload is larger than the {limit:,}-byte limit "
                    "(KDSERVE_MAX_UPLOAD_BYTES); send a smaller file"
                )
            if chunk:
                await run_in_threadpool(writer.write, chunk)
        if writer.size == 0:
            raise Invalid("the uploaded file is empty")
        return await run_in_threadpool(writer.commit)
    except StorageError as exc:
        await run_in_threadpool(writer.abort)
        raise Unavailable(
            f"storage failed while receiving the upload: {exc}", headers={"Retry-After": "10"}
        ) from exc
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise


def record_blob(session: Session, store: BlobStore, tenant: Tenant, obj: StoredObject) -> Blob:
    """The tenant's blob for these bytes: an identical earlier upload is reused (sha256)."""
    existing = _find(session, tenant.id, obj.sha256)
    if existing is not None:
        if existing.uri != obj.uri:
            store.delete(obj.uri)
        return existing
    blob = Blob(tenant_id=tenant.id, uri=obj.uri, size=obj.size, sha256=obj.sha256)
    try:
        with session.begin_nested():
            session.add(blob)
    except IntegrityError:  # the same bytes arrived concurrently: keep the first
        existing = _find(session, tenant.id, obj.sha256)
        if existing is None:
            raise
        store.delete(obj.uri)
        return existing
    return blob


def _find(session: Session, tenant_id: uuid.UUID, sha256: str) -> Blob | None:
    return session.scalars(
        select(Blob).where(Blob.tenant_id == tenant_id, Blob.sha256 == sha256)
    ).first()


async def iter_upload_file(upload: UploadFile, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
    """Chunks of a multipart file part (Starlette has already spooled it to disk)."""
    while data := await upload.read(chunk):
        yield data
