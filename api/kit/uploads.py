"""Uploads stream into object storage chunk by chunk, hashed on the way, never held whole
in memory; an upload over the size limit or the tenant's stored-bytes quota is cut off with
413 and leaves nothing behind."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from api.kit.errors import Invalid, PayloadTooLarge, QuotaExceeded, Unavailable
from store.blobs import BlobStore, StorageError, StoredObject
from store.models import Blob, Tenant
from store.repositories.catalog import stored_bytes
from store.settings import Settings


@dataclass(frozen=True)
class Quota:
    """A tenant's stored bytes and its limit, read when an upload starts."""

    used: int
    limit: int

    @classmethod
    def of(cls, session: Session, settings: Settings, tenant: Tenant) -> Quota:
        limit = tenant.max_stored_bytes
        if limit is None:
            limit = settings.max_stored_bytes_per_tenant
        return cls(used=stored_bytes(session, tenant.id), limit=limit)

    def check(self, incoming: int) -> None:
        """Refuse ``incoming`` more bytes if they do not fit."""
        if self.used + incoming > self.limit:
            raise QuotaExceeded(
                f"this upload ({incoming:,} bytes or more) does not fit: the tenant's teachers "
                f"and datasets use {self.used:,} of its {self.limit:,} stored bytes "
                "(KDSERVE_MAX_STORED_BYTES_PER_TENANT); delete teachers or datasets you no "
                "longer need (DELETE /v1/teachers/{id}, /v1/datasets/{id}) or ask the operator "
                "for a larger limit"
            )

    def check_declared(self, content_length: str | None) -> None:
        """Refuse before reading the body when its declared length already does not fit."""
        if content_length is not None and content_length.isdigit():
            self.check(int(content_length))


async def stream_to_storage(
    chunks: AsyncIterator[bytes],
    *,
    store: BlobStore,
    tenant_id: uuid.UUID,
    limit: int,
    quota: Quota | None = None,
) -> StoredObject:
    writer = store.writer(f"tenants/{tenant_id}/blobs/{uuid.uuid4()}")
    try:
        async for chunk in chunks:
            if writer.size + len(chunk) > limit:
                raise PayloadTooLarge(
                    f"the upload is larger than the {limit:,}-byte limit "
                    "(KDSERVE_MAX_UPLOAD_BYTES); send a smaller file"
                )
            if quota is not None:
                quota.check(writer.size + len(chunk))
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


async def read_form(request: Request, *, max_fields: int) -> FormData:
    """The multipart form of an upload (one file part at most); a body Starlette cannot parse
    (no boundary, too many fields, a field over 1 MiB) is a 422 that says why, not a bare 400."""
    try:
        return await request.form(max_files=1, max_fields=max_fields)
    except HTTPException as exc:
        if exc.status_code != 400:
            raise
        raise Invalid(
            f"malformed multipart body: {exc.detail} (send one `file` part and at most "
            f"{max_fields} fields)"
        ) from None


async def iter_upload_file(upload: UploadFile, chunk: int = 1 << 20) -> AsyncIterator[bytes]:
    """Chunks of a multipart file part (Starlette has already spooled it to disk)."""
    while data := await upload.read(chunk):
        yield data
