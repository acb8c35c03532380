from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from api.kit.deps import ServicesDep, SessionDep, TenantDep
from api.kit.errors import problems
from api.kit.pagination import decode_cursor, split_page
from api.kit.schemas import DEFAULT_PAGE, MAX_PAGE
from store.repositories.cache import CacheRepository

from . import service
from .schemas import CacheEntryList

router = APIRouter(prefix="/v1/cache", tags=["cache"])


@router.get("", response_model=CacheEntryList, responses=problems(401, 422))
def list_cache_entries(
    session: SessionDep,
    tenant: TenantDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
) -> CacheEntryList:
    """List the tenant's teacher-cache entries, newest first."""
    rows = CacheRepository(session, tenant.id).list_page(
        after=decode_cursor(cursor) if cursor else None, limit=limit
    )
    page, nxt = split_page(rows, limit)
    return CacheEntryList(items=[service.to_public(e) for e in page], next_cursor=nxt)


@router.delete(
    "/{entry_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problems(401, 404, 503),
)
def delete_cache_entry(
    entry_id: str, session: SessionDep, tenant: TenantDep, services: ServicesDep
) -> None:
    """Delete a teacher-cache entry; the next job that needs it builds it again."""
    service.delete(session, services.store, tenant=tenant, entry_id=entry_id)
