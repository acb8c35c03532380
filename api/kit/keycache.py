"""API keys the process checked recently, so a polling client's key is not looked up (and
its tenant read) on every request.

Entries are keyed by the SHA-256 of the whole key, which the check computes anyway: a hit
means the caller sent exactly a key the database accepted at most ``ttl_s`` ago. Only
accepted keys are kept, so a wrong key always reaches the database and its constant-time
comparison. The bound on revocation is ``ttl_s`` (``KDSERVE_KEY_CACHE_TTL_S``): a key
revoked with ``kdserve keys revoke`` is refused by every API process within that time,
and the tenant's limits read with it are as old at most.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from store.models import Tenant

MAX_ENTRIES = 10_000  # far more keys than a process sees; a bound against memory growth


class KeyCache:
    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[str, tuple[float, Tenant]] = {}

    def get(self, key_hash: str) -> Tenant | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        expires, tenant = entry
        if self.clock() >= expires:
            self._entries.pop(key_hash, None)
            return None
        return tenant

    def put(self, key_hash: str, tenant: Tenant) -> None:
        if self.ttl_s <= 0:
            return
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()  # rare: only costs one lookup per key again
        self._entries[key_hash] = (self.clock() + self.ttl_s, tenant)
