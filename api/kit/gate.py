"""The first thing a request meets: authenticate, then read (a pure ASGI middleware).

FastAPI reads and parses a route's body before it runs the route's dependencies, so a key
checked by a dependency is checked after the body was read: an anonymous 100 MB JSON body
was read and parsed before its 401. :class:`Gate` checks the key first. A request under
``/v1/`` without a valid key gets its 401 at once, the same answer whether or not the tenant
exists, and its body is never read; the tenant found is left in ``request.state.tenant``
for :func:`api.kit.deps.get_tenant`. A key the process accepted in the last
``KDSERVE_KEY_CACHE_TTL_S`` is not looked up again; a lookup holds a database session only
for its one query.

Then it bounds the body. An upload (a multipart or raw body sent to an upload route) may be
``KDSERVE_MAX_UPLOAD_BYTES`` (plus room for the form's fields; the upload code counts the
file exactly); any other body, ``KDSERVE_MAX_JSON_BODY_BYTES``. A declared
``Content-Length`` over the limit is a 413 before anything is read, an undeclared (chunked)
body a 413 as soon as the bytes received pass it. A body that sends nothing for
``KDSERVE_REQUEST_BODY_IDLE_TIMEOUT_S`` is cut off with 408, so a stalled client holds its
connection for a bounded time (and no database session at all: see
:func:`api.kit.deps.db_slot_held`).
"""

from __future__ import annotations

from collections.abc import Collection

import anyio
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.kit import errors
from api.kit.deps import Services, authenticate, unauthorized
from store.models import Tenant

UPLOAD_MEDIA_TYPES = ("multipart/form-data", "application/octet-stream")
FORM_ROOM = 1024 * 1024  # a multipart upload's fields and boundaries, beside its file


class Gate:
    """Authenticate ``/v1/`` requests before their body is read, then bound the body.

    Args:
        upload_paths: The paths whose ``POST`` takes an upload.
    """

    def __init__(self, app: ASGIApp, *, upload_paths: Collection[str]) -> None:
        self.app = app
        self.upload_paths = frozenset(upload_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        services: Services = scope["app"].state.services
        headers = Headers(scope=scope)
        path: str = scope["path"]
        if path == "/v1" or path.startswith("/v1/"):
            try:
                tenant: Tenant | None = await authenticate(services, headers.get("authorization"))
            except OperationalError:
                await errors.database_unavailable()(scope, receive, send)
                return
            except PoolTimeout:
                await errors.busy()(scope, receive, send)
                return
            if tenant is None:
                await errors.render(unauthorized())(scope, receive, send)
                return
            scope.setdefault("state", {})["tenant"] = tenant

        settings = services.settings
        if self._is_upload(scope, headers):
            limit, setting = settings.max_upload_bytes + FORM_ROOM, "KDSERVE_MAX_UPLOAD_BYTES"
        else:
            limit, setting = settings.max_json_body_bytes, "KDSERVE_MAX_JSON_BODY_BYTES"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            too_large = errors.BodyTooLarge(limit, setting)
            response = errors.problem_response(413, too_large.title, too_large.detail, "too_large")
            await response(scope, receive, send)
            return
        body = _BoundedBody(
            receive, limit=limit, setting=setting, idle_s=settings.request_body_idle_timeout_s
        )
        await self.app(scope, body, send)

    def _is_upload(self, scope: Scope, headers: Headers) -> bool:
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        return (
            scope["method"] == "POST"
            and scope["path"] in self.upload_paths
            and media in UPLOAD_MEDIA_TYPES
        )


class _BoundedBody:
    """The request's ``receive``, counting the body's bytes against ``limit`` and waiting at
    most ``idle_s`` for each part of it. Once the body is complete, later calls (which wait
    for the client to disconnect) pass straight through."""

    def __init__(self, receive: Receive, *, limit: int, setting: str, idle_s: float) -> None:
        self.receive, self.limit, self.setting, self.idle_s = receive, limit, setting, idle_s
        self.size = 0
        self.complete = False

    async def __call__(self) -> Message:
        if self.complete:
            return await self.receive()
        with anyio.move_on_after(self.idle_s) as waited:
            message = await self.receive()
        if waited.cancelled_caught:
            raise errors.BodyTimeout(self.idle_s)
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.limit:
                raise errors.BodyTooLarge(self.limit, self.setting)
            self.complete = not message.get("more_body", False)
        return message
