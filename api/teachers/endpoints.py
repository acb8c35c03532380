from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.kit.deps import ServicesDep, SessionDep, TenantDep, parse_id
from api.kit.errors import Invalid, NotFound, UnsupportedMediaType, problems
from api.kit.pagination import decode_cursor, split_page
from api.kit.schemas import DEFAULT_PAGE, MAX_PAGE, parse_json_object, parse_shape, plain_text
from api.kit.uploads import Quota, iter_upload_file, read_form, stream_to_storage
from store.repositories.catalog import TeacherRepository

from . import service
from .schemas import TeacherFromJob, TeacherList, TeacherPublic

router = APIRouter(prefix="/v1/teachers", tags=["teachers"])

_UPLOAD_FIELDS = {
    "arch": {
        "type": "string",
        "description": "architecture spec (JSON); needed for safetensors and state-dict files",
    },
    "input_shape": {"type": "string", "example": "3,32,32"},
    "num_classes": {"type": "integer", "minimum": 2},
    "name": {"type": "string"},
}
_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "input_shape", "num_classes"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        **_UPLOAD_FIELDS,
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": TeacherFromJob.model_json_schema()},
        },
    },
    "parameters": [
        {
            "name": k,
            "in": "query",
            "required": False,
            "schema": v,
            "description": "with application/octet-stream bodies",
        }
        for k, v in _UPLOAD_FIELDS.items()
    ],
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TeacherPublic,
    responses=problems(401, 404, 409, 413, 415, 422),
    openapi_extra=_BODY,
)
async def create_teacher(
    request: Request, session: SessionDep, tenant: TenantDep, services: ServicesDep
) -> TeacherPublic:
    """Register a teacher: a multipart upload, a raw streamed body, or {"from_job": id}."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            body = TeacherFromJob.model_validate_json(await request.body())
        except ValidationError as exc:
            raise Invalid(
                'send {"from_job": "<job id>", "name": "..."}: '
                + "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
                    for e in exc.errors()
                )
            ) from exc
        teacher = await run_in_threadpool(
            service.create_from_job, session, tenant=tenant, job_id=body.from_job, name=body.name
        )
        return service.to_public(teacher)
    if ctype == "multipart/form-data":
        form = await read_form(request, max_fields=8)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Invalid("multipart body needs a `file` part with the teacher's weights")
        fields: dict[str, Any] = {k: form.get(k) for k in _UPLOAD_FIELDS}
        chunks = iter_upload_file(upload)
    elif ctype == "application/octet-stream":
        fields = {k: request.query_params.get(k) for k in _UPLOAD_FIELDS}
        chunks = request.stream()
    else:
        raise UnsupportedMediaType(
            "send multipart/form-data (file, arch, input_shape, num_classes), "
            "application/octet-stream with those as query parameters, or application/json "
            '{"from_job": ...}'
        )
    arch = service.check_arch(parse_json_object(_text(fields.get("arch")), "arch"))
    input_shape = parse_shape(_text(fields.get("input_shape")) or "")
    num_classes = _int(fields.get("num_classes"), "num_classes")
    name = plain_text(_text(fields.get("name")) or "", "name")
    if num_classes < 2:  # before streaming, so a refusal stores nothing
        raise Invalid("num_classes must be at least 2")
    quota = await run_in_threadpool(Quota.of, session, services.settings, tenant)
    if ctype == "application/octet-stream":  # a multipart length also counts the form
        quota.check_declared(request.headers.get("content-length"))
    obj = await stream_to_storage(
        chunks,
        store=services.store,
        tenant_id=tenant.id,
        limit=services.settings.max_upload_bytes,
        quota=quota,
    )
    teacher = await run_in_threadpool(
        service.create_from_upload,
        session,
        services.store,
        tenant=tenant,
        obj=obj,
        arch=arch,
        input_shape=input_shape,
        num_classes=num_classes,
        name=name,
    )
    return service.to_public(teacher)


@router.get("", response_model=TeacherList, responses=problems(401, 422))
def list_teachers(
    session: SessionDep,
    tenant: TenantDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
) -> TeacherList:
    """List the tenant's teachers, newest first."""
    rows = TeacherRepository(session, tenant.id).list_page(
        after=decode_cursor(cursor) if cursor else None, limit=limit
    )
    page, nxt = split_page(rows, limit)
    return TeacherList(items=[service.to_public(t) for t in page], next_cursor=nxt)


@router.get("/{teacher_id}", response_model=TeacherPublic, responses=problems(401, 404))
def get_teacher(teacher_id: str, session: SessionDep, tenant: TenantDep) -> TeacherPublic:
    """One teacher, with its layers once validated."""
    teacher = TeacherRepository(session, tenant.id).get(parse_id(teacher_id, "teacher"))
    if teacher is None:
        raise NotFound(f"no teacher {teacher_id}")
    return service.to_public(teacher)


@router.delete(
    "/{teacher_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(401, 404)
)
def delete_teacher(teacher_id: str, session: SessionDep, tenant: TenantDep) -> None:
    """Delete a teacher (jobs that used it keep their results)."""
    repo = TeacherRepository(session, tenant.id)
    teacher = repo.get(parse_id(teacher_id, "teacher"))
    if teacher is None:
        raise NotFound(f"no teacher {teacher_id}")
    repo.delete(teacher)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any, field: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise Invalid(f"{field} must be an integer") from None
