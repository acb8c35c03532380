"""Teacher-cache entries of a tenant (:class:`store.models.CacheEntry`): listed and deleted by
the API, looked up, recorded and evicted by the worker. Every query but the total-size
eviction is scoped to the tenant: another tenant's entry is never found, hit or deleted.

Two jobs that build the same missing entry at once both upload it under the same object name
(the key) and both record it: the unique ``(tenant_id, key)`` and an upsert leave one row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.models import CacheEntry
from store.repositories.common import page


@dataclass
class CacheRepository:
    session: Session
    tenant_id: uuid.UUID

    def get(self, entry_id: uuid.UUID) -> CacheEntry | None:
        return self.session.scalars(
            select(CacheEntry).where(
                CacheEntry.id == entry_id, CacheEntry.tenant_id == self.tenant_id
            )
        ).first()

    def by_key(self, key: str) -> CacheEntry | None:
        return self.session.scalars(
            select(CacheEntry).where(CacheEntry.tenant_id == self.tenant_id, CacheEntry.key == key)
        ).first()

    def list_page(
        self, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[CacheEntry]:
        q = select(CacheEntry).where(CacheEntry.tenant_id == self.tenant_id)
        return list(self.session.scalars(page(q, CacheEntry, after=after, limit=limit)))

    def delete(self, entry: CacheEntry) -> None:
        self.session.delete(entry)
        self.session.flush()

    def delete_key(self, key: str) -> str | None:
        """Remove the entry ``key`` (a corrupt one); its object's URI, or None if none."""
        entry = self.by_key(key)
        if entry is None:
            return None
        self.delete(entry)
        return entry.uri

    def hit(self, entry_id: uuid.UUID, *, now: datetime) -> None:
        """Count one use: ``hits + 1`` and ``last_used_at`` (in the database, so concurrent
        hits all count)."""
        self.session.execute(
            update(CacheEntry)
            .where(CacheEntry.id == entry_id, CacheEntry.tenant_id == self.tenant_id)
            .values(hits=CacheEntry.hits + 1, last_used_at=now)
        )

    def record(self, *, key: str, uri: str, size: int, sha256: str, now: datetime) -> None:
        """Insert the entry, or update the row a concurrent builder inserted first."""
        values: dict[str, Any] = {
            "id": uuid.uuid4(),
            "tenant_id": self.tenant_id,
            "key": key,
            "uri": uri,
            "size": size,
            "sha256": sha256,
            "hits": 0,
            "last_used_at": now,
            "created_at": now,
        }
        dialect = self.session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = insert(CacheEntry).values(**values)
        self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[CacheEntry.tenant_id, CacheEntry.key],
                set_={"uri": uri, "size": size, "sha256": sha256, "last_used_at": now},
            )
        )

    def used_bytes(self) -> int:
        return int(
            self.session.scalar(
                select(func.coalesce(func.sum(CacheEntry.size), 0)).where(
                    CacheEntry.tenant_id == self.tenant_id
                )
            )
            or 0
        )

    def evict(self, *, keep: str, max_tenant_bytes: int, max_total_bytes: int) -> list[str]:
        """Delete least recently used entries until the tenant's entries fit
        ``max_tenant_bytes`` and everyone's ``max_total_bytes``; never the entry ``keep`` (the
        one just recorded). Returns the URIs of the objects to delete once this commits."""
        mine = CacheEntry.tenant_id == self.tenant_id
        uris = _evict(
            self.session, mine, keep_key=keep, keep_tenant=self.tenant_id, limit=max_tenant_bytes
        )
        uris += _evict(
            self.session, None, keep_key=keep, keep_tenant=self.tenant_id, limit=max_total_bytes
        )
        return uris


def _evict(
    session: Session, scope: Any, *, keep_key: str, keep_tenant: uuid.UUID, limit: int
) -> list[str]:
    total_q = select(func.coalesce(func.sum(CacheEntry.size), 0))
    rows_q = select(
        CacheEntry.id, CacheEntry.uri, CacheEntry.size, CacheEntry.tenant_id, CacheEntry.key
    )
    if scope is not None:
        total_q, rows_q = total_q.where(scope), rows_q.where(scope)
    total = int(session.scalar(total_q) or 0)
    if total <= limit:
        return []
    victims: list[tuple[uuid.UUID, str]] = []
    for id_, uri, size, tenant_id, key in session.execute(
        rows_q.order_by(CacheEntry.last_used_at, CacheEntry.created_at, CacheEntry.id)
    ):
        if total <= limit:
            break
        if tenant_id == keep_tenant and key == keep_key:
            continue
        victims.append((id_, uri))
        total -= size
    if victims:
        session.execute(delete(CacheEntry).where(CacheEntry.id.in_([v[0] for v in victims])))
    return [uri for _, uri in victims]
