"""One error base, rendered by one handler as RFC 9457 problem+json (422s too)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from kdcore.contract import explain_errors, summarize

PROBLEM = "application/problem+json"


class Problem(BaseModel):
    """RFC 9457 problem details, plus a stable machine-readable ``code``."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    errors: list[dict[str, Any]] | None = None


class KDServeError(Exception):
    status_code = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(
        self,
        message: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors
        self.headers = headers


class Unauthorized(KDServeError):
    status_code, code, title = 401, "unauthorized", "Unauthorized"


class NotFound(KDServeError):
    status_code, code, title = 404, "not_found", "Not found"


class Conflict(KDServeError):
    status_code, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(KDServeError):
    status_code, code, title = 413, "too_large", "Payload too large"


class QuotaExceeded(PayloadTooLarge):
    code, title = "quota_exceeded", "Storage quota exceeded"


class UnsupportedMediaType(KDServeError):
    status_code, code, title = 415, "unsupported_media_type", "Unsupported media type"


class Invalid(KDServeError):
    status_code, code, title = 422, "invalid", "Invalid request"


class OverLimit(Invalid):
    """A job whose cost (parameters, MACs, memory, samples × epochs) passes a service limit."""

    code, title = "over_limit", "Over a service limit"


class TooManyRequests(KDServeError):
    status_code, code, title = 429, "limit_reached", "Limit reached"


class Unavailable(KDServeError):
    status_code, code, title = 503, "unavailable", "Service unavailable"


class BodyRefused(StarletteHTTPException):
    """Raised while a body is read (by :mod:`api.kit.gate`): a Starlette HTTPException, so
    FastAPI's body parsing passes it on as it is instead of turning it into a 400."""

    code = "http_error"
    title = "Bad request"


class BodyTooLarge(BodyRefused):
    code, title = "too_large", "Payload too large"

    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(
            413,
            f"the request body is larger than this endpoint's {limit:,}-byte limit ({setting}); "
            "send a smaller body",
        )


class BodyTimeout(BodyRefused):
    code, title = "timeout", "Request timeout"

    def __init__(self, idle_s: float) -> None:
        super().__init__(
            408,
            f"the request body stalled: nothing arrived for {idle_s:g} s "
            "(KDSERVE_REQUEST_BODY_IDLE_TIMEOUT_S); send it again",
        )


def problem_response(
    status: int,
    title: str,
    detail: str,
    code: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = Problem(title=title, status=status, detail=detail, code=code, errors=errors)
    return JSONResponse(
        jsonable_encoder(body.model_dump(exclude_none=True)),
        status_code=status,
        media_type=PROBLEM,
        headers=headers,
    )


def render(exc: KDServeError) -> JSONResponse:
    return problem_response(
        exc.status_code, exc.title, exc.message, exc.code, exc.errors, exc.headers
    )


def database_unavailable() -> JSONResponse:
    # The database is restarting or unreachable: tell clients to come back, not a 500.
    return problem_response(
        503,
        "Service unavailable",
        "the database is unavailable; retry shortly",
        "unavailable",
        headers={"Retry-After": "5"},
    )


def busy() -> JSONResponse:
    return problem_response(
        503,
        "Service unavailable",
        "the server is busy; retry shortly",
        "unavailable",
        headers={"Retry-After": "2"},
    )


# Problem responses for the OpenAPI document, e.g. ``responses=problems(404, 409)``.
def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": Problem, "content": {PROBLEM: {}}} for s in statuses}


def _allowed_methods(request: Request) -> list[str]:
    """The methods the OpenAPI document gives the request's path (HEAD goes with GET)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(request.scope["path"]):
            methods |= {m.upper() for m in operations}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _in_body(error: dict[str, Any]) -> dict[str, Any]:
    """Name a body field by its path in the JSON the user sent (``config.alpha``), as the
    service's own 422s do; query, path and header fields keep their prefix."""
    loc = tuple(error.get("loc", ()))
    return {**error, "loc": loc[1:]} if len(loc) > 1 and loc[0] == "body" else error


def install(app: FastAPI) -> None:
    @app.exception_handler(KDServeError)
    async def _kdserve(_r: Request, exc: KDServeError) -> JSONResponse:
        return render(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_r: Request, exc: RequestValidationError) -> JSONResponse:
        errors = explain_errors(_in_body(e) for e in exc.errors())
        return problem_response(422, "Invalid request", summarize(errors), "invalid", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, BodyRefused):
            return problem_response(exc.status_code, exc.title, exc.detail, exc.code)
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette's `Allow` names only the first route with this path (GET of
            # /v1/teachers/{id}, not its DELETE): list every method the path has.
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        if exc.status_code == 400:
            # FastAPI/Starlette could not parse the body (not UTF-8, a broken form): the same
            # 422 as a body that parses but does not validate (invalid JSON is one already).
            return problem_response(
                422, "Invalid request", f"the request body could not be parsed: {detail}", "invalid"
            )
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error"
        )
        if exc.status_code == 413:
            detail = (
                "the request body is larger than this server accepts (KDSERVE_MAX_UPLOAD_BYTES)"
            )
        return problem_response(
            exc.status_code,
            detail if exc.status_code != 413 else "Payload too large",
            detail,
            code,
            headers=headers,
        )

    @app.exception_handler(OperationalError)
    async def _db_down(_r: Request, _exc: OperationalError) -> JSONResponse:
        return database_unavailable()

    @app.exception_handler(PoolTimeout)
    async def _pool(_r: Request, _exc: PoolTimeout) -> JSONResponse:
        return busy()
