"""How many long-lived streams (server-sent events) are open in this API process, per
tenant and in all, so that streams cannot use up the server's connections and threads.

Counted in the process, not the database: a stream is a connection to this process, and a
process that dies closes its streams and forgets its counts with them. The event loop is one
thread and nothing awaits between a check and its increment, so no lock is needed.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field

from api.kit.errors import TooManyRequests

RETRY_AFTER_S = 10


@dataclass
class StreamSlots:
    open: Counter[uuid.UUID] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.open.values())

    def take(self, tenant_id: uuid.UUID, *, per_tenant: int, total: int) -> None:
        """Count one more stream of ``tenant_id``.

        Raises:
            TooManyRequests: the tenant, or the process, has as many streams open as allowed.
        """
        if self.open[tenant_id] >= per_tenant:
            raise TooManyRequests(
                f"this tenant already has {per_tenant} event streams open on this server "
                "(KDSERVE_MAX_EVENT_STREAMS_PER_TENANT); close one, or read the events as JSON "
                "(GET /v1/jobs/{id}/events without Accept: text/event-stream)",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        if self.total >= total:
            raise TooManyRequests(
                f"this server already serves {total} event streams (KDSERVE_MAX_EVENT_STREAMS); "
                "retry shortly, or read the events as JSON",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.open[tenant_id] += 1

    def give_back(self, tenant_id: uuid.UUID) -> None:
        self.open[tenant_id] -= 1
        if self.open[tenant_id] <= 0:
            del self.open[tenant_id]
