from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.kit.deps import ServicesDep, SessionDep, TenantDep, parse_id
from api.kit.errors import Invalid, NotFound, UnsupportedMediaType, problems
from api.kit.pagination import decode_cursor, split_page
from api.kit.schemas import DEFAULT_PAGE, MAX_PAGE, plain_text
from api.kit.uploads import Quota, iter_upload_file, read_form, stream_to_storage
from store.repositories.catalog import DatasetRepository

from . import service
from .schemas import DatasetList, DatasetPublic

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "name": {"type": "string"},
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "parameters": [
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
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    responses=problems(401, 413, 415, 422),
    openapi_extra=_BODY,
)
async def create_dataset(
    request: Request, session: SessionDep, tenant: TenantDep, services: ServicesDep
) -> DatasetPublic:
    """Upload a dataset (.npz or image-folder archive); a worker then validates it."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await read_form(request, max_fields=4)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Invalid("multipart body needs a `file` part")
        filename = service.check_filename(upload.filename)
        name = form.get("name")
        chunks = iter_upload_file(upload)
    elif ctype == "application/octet-stream":
        filename = service.check_filename(request.query_params.get("filename"))
        name = request.query_params.get("name")
        chunks = request.stream()
    else:
        raise UnsupportedMediaType(
            "send multipart/form-data with a `file` part, or "
            "application/octet-stream with ?filename=..."
        )
    quota = await run_in_threadpool(Quota.of, session, services.settings, tenant)
    if ctype == "application/octet-stream":  # a multipart length also counts the form
        quota.check_declared(request.headers.get("content-length"))
    name = plain_text(name if isinstance(name, str) else "", "name")
    obj = await stream_to_storage(
        chunks,
        store=services.store,
        tenant_id=tenant.id,
        limit=services.settings.max_upload_bytes,
        quota=quota,
    )
    dataset = await run_in_threadpool(
        service.create,
        session,
        services.store,
        tenant=tenant,
        obj=obj,
        filename=filename,
        name=name,
    )
    return service.to_public(dataset)


@router.get("", response_model=DatasetList, responses=problems(401, 422))
def list_datasets(
    session: SessionDep,
    tenant: TenantDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
) -> DatasetList:
    """List the tenant's datasets, newest first."""
    rows = DatasetRepository(session, tenant.id).list_page(
        after=decode_cursor(cursor) if cursor else None, limit=limit
    )
    page, nxt = split_page(rows, limit)
    return DatasetList(items=[service.to_public(d) for d in page], next_cursor=nxt)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=problems(401, 404))
def get_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> DatasetPublic:
    """One dataset, with samples, input shape and classes once validated."""
    dataset = DatasetRepository(session, tenant.id).get(parse_id(dataset_id, "dataset"))
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id}")
    return service.to_public(dataset)


@router.delete(
    "/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(401, 404)
)
def delete_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> None:
    """Delete a dataset (jobs that used it keep their results)."""
    repo = DatasetRepository(session, tenant.id)
    dataset = repo.get(parse_id(dataset_id, "dataset"))
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id}")
    repo.delete(dataset)
