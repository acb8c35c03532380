"""Receiving a teacher's or dataset's file: a multipart form or a raw body with its fields
in the query string (:func:`receive`). Uploads stream into object storage chunk by chunk,
hashed on the way, never held whole in memory; an upload over the size limit or the tenant's
stored-bytes quota is cut off with 413 and leaves nothing behind; bytes the tenant already
stored are kept once (:func:`record_blob`). What happens to the upload next is
:mod:`api.kit.catalog`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from api.kit.deps import Services
from api.kit.errors import (
    Invalid,
    PayloadTooLarge,
    QuotaExceeded,
    Unavailable,
    UnsupportedMediaType,
)
from store.blobs import BlobStore, StorageError, StoredObject
from store.models import Blob, Tenant
from store.repositories.catalog import find_or_add_blob, stored_bytes
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


def upload_body(
    form: dict[str, dict[str, Any]],
    *,
    required: Sequence[str] = (),
    query: list[dict[str, Any]],
    content: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``openapi_extra`` of an upload route: a multipart ``file`` with the fields in
    ``form``, or a raw body with the ``query`` parameters, or another ``content`` type."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", *required],
                        "properties": {"file": {"type": "string", "format": "binary"}, **form},
                    }
                },
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                **(content or {}),
            },
        },
        "parameters": query,
    }


def media_type(request: Request) -> str:
    """The request's Content-Type, lower case, without its parameters."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


@dataclass(frozen=True)
class Incoming:
    """An upload's fields and its file, not read yet: from a multipart form, or from a raw
    ``application/octet-stream`` body with the fields as query parameters."""

    fields: dict[str, str | None]
    filename: str | None  # the file part's name, or ?filename=
    chunks: AsyncIterator[bytes]
    declared: str | None  # the body's Content-Length when the body is the file alone


async def receive(
    request: Request,
    *,
    fields: Collection[str],
    max_fields: int,
    file_part: str,
    unsupported: str,
) -> Incoming:
    """The upload a request carries; ``file_part`` says what the multipart ``file`` part
    holds, ``unsupported`` what to send instead of another media type (a 415)."""
    ctype = media_type(request)
    if ctype == "multipart/form-data":
        form = await read_form(request, max_fields=max_fields)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Invalid(f"multipart body needs {file_part}")
        values = {k: form.get(k) for k in fields}
        return Incoming(
            fields={k: v if isinstance(v, str) else None for k, v in values.items()},
            filename=upload.filename,
            chunks=iter_upload_file(upload),
            declared=None,  # a multipart length also counts the form
        )
    if ctype == "application/octet-stream":
        query = request.query_params
        return Incoming(
            fields={k: query.get(k) for k in fields},
            filename=query.get("filename"),
            chunks=request.stream(),
            declared=request.headers.get("content-length"),
        )
    raise UnsupportedMediaType(unsupported)


async def store_upload(
    incoming: Incoming, *, session: Session, services: Services, tenant: Tenant
) -> StoredObject:
    """Stream the upload's file into storage, within the size limit and the tenant's quota.
    Check its fields first: a refusal then stores nothing."""
    quota = await run_in_threadpool(Quota.of, session, services.settings, tenant)
    quota.check_declared(incoming.declared)
    return await stream_to_storage(
        incoming.chunks,
        store=services.store,
        tenant_id=tenant.id,
        limit=services.settings.max_upload_bytes,
        quota=quota,
    )


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
    """The tenant's blob for these bytes: an identical earlier upload is reused (sha256) and
    this upload's copy deleted."""
    blob, added = find_or_add_blob(
        session, tenant.id, uri=obj.uri, size=obj.size, sha256=obj.sha256
    )
    if not added and blob.uri != obj.uri:
        store.delete(obj.uri)
    return blob


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
