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

    def revoke_key(self, key: str) -> bool:
        """Revoke the active key ``key`` (the whole key: a wrong secret matches nothing)."""
        prefix = keys.split_prefix(key)
        if prefix is None:
            return False
        row = self.session.scalars(
            select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
        ).first()
        if row is None or not keys.matches(key, row.key_hash):
            return False
        return self.revoke_prefix(prefix)

    def revoke_prefix(self, prefix: str) -> bool:
        """Revoke the active key whose prefix is ``prefix``, whatever its secret: for an
        operator who has lost the key but knows its prefix (``kds_<prefix>_...``)."""
        result = self.session.execute(
            update(ApiKey)
            .where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def has_keys(self) -> bool:
        return self.session.scalars(select(ApiKey.id).limit(1)).first() is not None
