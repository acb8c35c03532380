"""Receiving a teacher's or dataset's file: a multipart form or a raw body with its fields
in the query string (:func:`receive`). Uploads stream into object storage chunk by chunk,
hashed on the way, never held whole in memory; an upload over the size limit or the tenant's
stored-bytes quota is cut off with 413 and leaves nothing behind; bytes the tenant already
stored are kept once (:func:`record_blob`). What happens to the upload next is
:mod:`api.kit.catalog`.

An upload holds no database session while its body arrives: :func:`upload_slot` takes one
of the tenant's upload slots in a short transaction, the file streams (:func:`store_upload`),
and :func:`record_upload` records it in another, counting the quota exactly."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import anyio
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message

from api.kit.deps import Services, in_transaction
from api.kit.errors import (
    Invalid,
    KDServeError,
    PayloadTooLarge,
    QuotaExceeded,
    TooManyRequests,
    Unavailable,
    UnsupportedMediaType,
)
from store.blobs import BlobStore, StorageError, StoredObject
from store.models import Blob, Tenant, utcnow
from store.repositories.catalog import Upload, find_or_add_blob, stored_bytes
from store.repositories.limits import (
    live_upload_slots,
    lock_tenant,
    release_upload_slot,
    renew_upload_slot,
    take_upload_slot,
    validating,
)
from store.settings import Settings

log = logging.getLogger(__name__)


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
            raise self.refusal(incoming)

    def refusal(self, incoming: int) -> QuotaExceeded:
        return QuotaExceeded(
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


@dataclass(frozen=True)
class Slot:
    """An upload in progress (:func:`upload_slot`): its row, the tenant's quota as it stood
    when the upload started, and the request to read the upload from."""

    id: uuid.UUID
    quota: Quota
    request: Request  # reads the body through a receive that keeps the slot alive


@asynccontextmanager
async def upload_slot(request: Request, services: Services, tenant: Tenant) -> AsyncIterator[Slot]:
    """Take one of the tenant's upload slots for the time the upload streams.

    No database session is held while the body arrives: the slot is a row, taken in a short
    transaction under the tenant's row lock (so concurrent uploads are counted atomically),
    kept alive while bytes arrive, and deleted at the end. A slot whose API process died
    expires by itself (twice ``KDSERVE_REQUEST_BODY_IDLE_TIMEOUT_S`` after its last bytes).

    Raises:
        TooManyRequests: the tenant has ``KDSERVE_MAX_CONCURRENT_UPLOADS_PER_TENANT`` uploads
            streaming, or ``KDSERVE_MAX_VALIDATING_UPLOADS_PER_TENANT`` teachers and
            datasets waiting for validation (uploads in progress included).
    """
    settings = services.settings
    ttl = timedelta(seconds=2 * settings.request_body_idle_timeout_s)
    slot_id, quota = await in_transaction(
        services, partial(_take_slot, settings=settings, tenant_id=tenant.id, ttl=ttl)
    )
    reading = _renewing(request, services, slot_id, ttl)
    try:
        yield Slot(slot_id, quota, reading)
    finally:
        with anyio.CancelScope(shield=True):
            await reading.close()  # a multipart form's spooled file goes at once
            try:
                await in_transaction(services, partial(release_upload_slot, slot_id=slot_id))
            except Exception as exc:  # it expires by itself
                log.warning("could not release upload slot %s: %s", slot_id, exc)


def _take_slot(
    session: Session, *, settings: Settings, tenant_id: uuid.UUID, ttl: timedelta
) -> tuple[uuid.UUID, Quota]:
    tenant = lock_tenant(session, tenant_id)
    now = utcnow()
    uploading = live_upload_slots(session, tenant_id, now=now)
    limit = settings.max_concurrent_uploads_per_tenant
    if uploading >= limit:
        raise TooManyRequests(
            f"this tenant already has {uploading} uploads in progress, its limit "
            "(KDSERVE_MAX_CONCURRENT_UPLOADS_PER_TENANT); wait for one to finish, then retry",
            headers={"Retry-After": "10"},
        )
    check_validations(session, settings, tenant_id, uploading=uploading)
    quota = Quota.of(session, settings, tenant)
    return take_upload_slot(session, tenant_id, now=now, ttl=ttl), quota


def check_validations(
    session: Session, settings: Settings, tenant_id: uuid.UUID, *, uploading: int | None = None
) -> int:
    """How many of the tenant's teachers and datasets wait for validation (its rank for the
    next one, :func:`store.queue.fair_priority`); call under the tenant's row lock.

    Raises:
        TooManyRequests: with uploads in progress, one more would pass
            ``KDSERVE_MAX_VALIDATING_UPLOADS_PER_TENANT``.
    """
    waiting = validating(session, tenant_id)
    if uploading is None:
        uploading = live_upload_slots(session, tenant_id, now=utcnow())
    limit = settings.max_validating_uploads_per_tenant
    if waiting + uploading >= limit:
        raise TooManyRequests(
            f"this tenant has {waiting} teachers and datasets waiting for validation and "
            f"{uploading} uploads in progress, its limit of {limit} "
            "(KDSERVE_MAX_VALIDATING_UPLOADS_PER_TENANT); wait until some are ready or "
            "invalid (GET /v1/teachers, GET /v1/datasets), then retry",
            headers={"Retry-After": "30"},
        )
    return waiting


def _renewing(request: Request, services: Services, slot_id: uuid.UUID, ttl: timedelta) -> Request:
    """``request`` reading its body through a receive that pushes the slot's expiry forward
    (at most every quarter of ``ttl``) while bytes arrive. Bytes arrive at least once per
    idle timeout (half of ``ttl``) or the request is cut off, so a live upload's slot never
    expires."""
    every = ttl.total_seconds() / 4
    due = time.monotonic() + every

    async def receive() -> Message:
        nonlocal due
        message = await request.receive()
        if time.monotonic() >= due:
            due = time.monotonic() + every
            renew = partial(renew_upload_slot, slot_id=slot_id, now=utcnow(), ttl=ttl)
            await in_transaction(services, renew)
        return message

    return Request(request.scope, receive)


async def store_upload(
    incoming: Incoming, *, services: Services, tenant: Tenant, slot: Slot
) -> StoredObject:
    """Stream the upload's file into storage, within the size limit and the tenant's quota
    (as it stood when the upload started; :func:`record_upload` checks it exactly). Check
    its fields first: a refusal then stores nothing."""
    slot.quota.check_declared(incoming.declared)
    return await stream_to_storage(
        incoming.chunks,
        store=services.store,
        tenant_id=tenant.id,
        limit=services.settings.max_upload_bytes,
        quota=slot.quota,
    )


async def record_upload(
    services: Services,
    *,
    tenant: Tenant,
    slot: Slot,
    obj: StoredObject,
    create: Callable[[Session, Tenant], Upload],
) -> Upload:
    """Record a stored upload in one short transaction under the tenant's row lock: its slot
    is released, ``create`` adds its row, and the tenant's stored bytes are counted exactly
    with it. Over the quota (uploads that raced past the check made while streaming), or
    refused by ``create``, nothing is kept: the row rolls back and the object is deleted.
    """

    def record(session: Session) -> Upload:
        locked = lock_tenant(session, tenant.id)
        release_upload_slot(session, slot_id=slot.id)
        before = Quota.of(session, services.settings, locked)
        row = create(session, locked)
        session.flush()
        after = stored_bytes(session, tenant.id)
        if after > before.limit:
            raise before.refusal(obj.size)
        return row

    try:
        return await in_transaction(services, record)
    except KDServeError:
        try:
            await run_in_threadpool(services.store.delete, obj.uri)
        except StorageError as exc:
            log.warning("could not delete the refused upload %s: %s", obj.uri, exc)
        raise


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
