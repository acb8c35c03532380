"""Reading and deleting a tenant's teacher-cache entries."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.kit.deps import parse_id
from api.kit.errors import NotFound, Unavailable
from store.blobs import BlobStore, StorageError
from store.models import CacheEntry, Tenant
from store.repositories.cache import CacheRepository

from .schemas import CacheEntryPublic


def get(session: Session, *, tenant: Tenant, entry_id: str) -> CacheEntry:
    """The tenant's entry with this path id, else a 404 (another tenant's too)."""
    entry = CacheRepository(session, tenant.id).get(parse_id(entry_id, "cache entry"))
    if entry is None:
        raise NotFound(f"no cache entry {entry_id}")
    return entry


def delete(session: Session, store: BlobStore, *, tenant: Tenant, entry_id: str) -> None:
    """Delete the object, then the row (committed by the session dependency). Should the
    commit fail, the row names a missing object: the next job that needs it finds nothing
    to fetch, builds it and records it again."""
    entry = get(session, tenant=tenant, entry_id=entry_id)
    try:
        store.delete(entry.uri)
    except (StorageError, OSError) as exc:
        raise Unavailable(f"storage did not delete the entry ({exc}); try again") from exc
    CacheRepository(session, tenant.id).delete(entry)


def to_public(entry: CacheEntry) -> CacheEntryPublic:
    return CacheEntryPublic.model_validate(entry, from_attributes=True)
