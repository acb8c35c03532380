"""Tenants and their API keys."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store import keys
from store.models import ApiKey, Tenant, utcnow


@dataclass
class TenantRepository:
    session: Session

    def get_or_create(self, name: str) -> Tenant:
        tenant = self.session.scalars(select(Tenant).where(Tenant.name == name)).first()
        if tenant is None:
            tenant = Tenant(name=name)
            self.session.add(tenant)
            self.session.flush()
        return tenant

    def create_key(self, tenant: Tenant, *, name: str = "") -> str:
        """A new key for ``tenant``; the plain key is returned once and never stored."""
        new = keys.generate_key()
        self.session.add(
            ApiKey(tenant_id=tenant.id, prefix=new.prefix, key_hash=new.key_hash, name=name)
        )
        self.session.flush()
        return new.key

    def revoke_key(self, key_or_prefix: str) -> bool:
        prefix = keys.split_prefix(key_or_prefix) or key_or_prefix
        result = self.session.execute(
            update(ApiKey)
            .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def has_keys(self) -> bool:
        return self.session.scalars(select(ApiKey.id).limit(1)).first() is not None
