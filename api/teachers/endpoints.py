from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request, status
from pydantic import ValidationError

from api.kit.deps import ServicesDep, TenantDep, in_transaction
from api.kit.errors import Invalid, problems
from api.kit.schemas import parse_json_object, parse_shape, plain_text
from api.kit.uploads import (
    media_type,
    receive,
    record_upload,
    store_upload,
    upload_body,
    upload_slot,
)
from kdcore.contract import MAX_CLASSES, explain_errors, summarize

from . import service
from .schemas import TeacherFromJob, TeacherPublic

router = APIRouter(prefix="/v1/teachers", tags=["teachers"])

_UPLOAD_FIELDS: dict[str, dict[str, Any]] = {
    "arch": {
        "type": "string",
        "description": "architecture spec (JSON); needed for safetensors and state-dict files",
    },
    "input_shape": {"type": "string", "example": "3,32,32"},
    "num_classes": {"type": "integer", "minimum": 2, "maximum": MAX_CLASSES},
    "name": {"type": "string"},
}
_BODY = upload_body(
    _UPLOAD_FIELDS,
    required=["input_shape", "num_classes"],
    query=[
        {
            "name": k,
            "in": "query",
            "required": False,
            "schema": v,
            "description": "with application/octet-stream bodies",
        }
        for k, v in _UPLOAD_FIELDS.items()
    ],
    content={"application/json": {"schema": TeacherFromJob.model_json_schema()}},
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TeacherPublic,
    responses=problems(401, 404, 408, 409, 413, 415, 422, 429),
    openapi_extra=_BODY,
)
async def create_teacher(
    request: Request, tenant: TenantDep, services: ServicesDep
) -> TeacherPublic:
    """Register a teacher: a multipart upload, a raw streamed body, or {"from_job": id}."""
    if media_type(request) == "application/json":
        try:
            body = TeacherFromJob.model_validate_json(await request.body())
        except ValidationError as exc:
            problems = summarize(explain_errors(exc.errors()))
            raise Invalid(f'send {{"from_job": "<job id>", "name": "..."}}: {problems}') from exc
        create = partial(
            service.create_from_job,
            settings=services.settings,
            tenant=tenant,
            job_id=body.from_job,
            name=body.name,
        )
        return service.catalog.to_public(await in_transaction(services, create))
    async with upload_slot(request, services, tenant) as slot:
        incoming = await receive(
            slot.request,
            fields=_UPLOAD_FIELDS,
            max_fields=8,
            file_part="a `file` part with the teacher's weights",
            unsupported="send multipart/form-data (file, arch, input_shape, num_classes), "
            "application/octet-stream with those as query parameters, or application/json "
            '{"from_job": ...}',
        )
        fields = incoming.fields
        # Checked before streaming, so a refusal stores nothing.
        declared = parse_json_object(fields["arch"], "arch")
        input_shape = parse_shape(fields["input_shape"] or "")
        num_classes = _int(fields["num_classes"], "num_classes", low=2, high=MAX_CLASSES)
        name = plain_text(fields["name"] or "", "name")
        arch = service.check_arch(
            declared, input_shape=input_shape, num_classes=num_classes, settings=services.settings
        )
        obj = await store_upload(incoming, services=services, tenant=tenant, slot=slot)
        teacher = await record_upload(
            services,
            tenant=tenant,
            slot=slot,
            obj=obj,
            create=partial(
                service.create_from_upload,
                store=services.store,
                settings=services.settings,
                obj=obj,
                arch=arch,
                input_shape=input_shape,
                num_classes=num_classes,
                name=name,
            ),
        )
    return service.catalog.to_public(teacher)


service.catalog.add_routes(router, get_doc="One teacher, with its layers once validated.")


def _int(value: str | None, field: str, *, low: int, high: int) -> int:
    """An integer in ``[low, high]`` (the columns it reaches are 32-bit)."""
    try:
        number = int(str(value))
    except ValueError:  # not a number, or over Python's 4,300 digits
        number = None
    if number is None or not low <= number <= high:
        raise Invalid(f"{field} must be an integer from {low} to {high:,}")
    return number
