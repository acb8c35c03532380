from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request, status

from api.kit.deps import ServicesDep, TenantDep
from api.kit.errors import problems
from api.kit.schemas import plain_text
from api.kit.uploads import receive, record_upload, store_upload, upload_body, upload_slot

from . import service
from .schemas import DatasetPublic

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

_BODY = upload_body(
    {"name": {"type": "string"}},
    query=[
        {
            "name": "filename",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "with application/octet-stream bodies: the file name (its suffix "
            "tells the format)",
        },
        {"name": "name", "in": "query", "required": False, "schema": {"type": "string"}},
    ],
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    responses=problems(401, 408, 413, 415, 422, 429),
    openapi_extra=_BODY,
)
async def create_dataset(
    request: Request, tenant: TenantDep, services: ServicesDep
) -> DatasetPublic:
    """Upload a dataset (.npz or image-folder archive); a worker then validates it."""
    async with upload_slot(request, services, tenant) as slot:
        incoming = await receive(
            slot.request,
            fields=("name",),
            max_fields=4,
            file_part="a `file` part",
            unsupported="send multipart/form-data with a `file` part, or "
            "application/octet-stream with ?filename=...",
        )
        filename = service.check_filename(incoming.filename)
        name = plain_text(incoming.fields["name"] or "", "name")
        obj = await store_upload(incoming, services=services, tenant=tenant, slot=slot)
        dataset = await record_upload(
            services,
            tenant=tenant,
            slot=slot,
            obj=obj,
            create=partial(
                service.create,
                store=services.store,
                settings=services.settings,
                obj=obj,
                filename=filename,
                name=name,
            ),
        )
    return service.catalog.to_public(dataset)


service.catalog.add_routes(
    router, get_doc="One dataset, with samples, input shape and classes once validated."
)
