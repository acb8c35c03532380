"""``Idempotency-Key``: a retry with the same key and the same request gets the first result
back; the same key with a different request is refused with 422, as the IETF draft
(draft-ietf-httpapi-idempotency-key-header, "Idempotency-Key reused with a different request
payload") says, rather than silently answering with what the first request made.

The key's row stores :func:`request_hash` of the request that used it first. Rows from before
the hash was stored have none and match any request, as they always did.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel

from api.kit.errors import Invalid


class IdempotencyKeyReused(Invalid):
    code, title = "idempotency_key_reused", "Idempotency-Key reused"


def request_hash(body: BaseModel) -> str:
    """sha256 of the request as parsed (canonical JSON: sorted keys, defaults filled in), so
    a retry that spells the same request differently (key order, spacing, a default written
    out) is the same request."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_same_request(key: str, stored: str | None, sent: str, *, what: str) -> None:
    """Refuse a key whose first request (hash ``stored``) was not this one (hash ``sent``).

    Raises:
        IdempotencyKeyReused: the key was used for a different request.
    """
    if stored is not None and stored != sent:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {key!r} was already used for a different {what} request; send "
            f"the same body to get that {what} back, or a new key for a new {what}"
        )
