"""API keys: ``kds_<prefix>_<secret>``. The prefix finds the row; only a SHA-256 of the whole
key is stored, and comparison is constant-time. Keys carry 256 random bits, so a plain
SHA-256 (no slow KDF) is enough to make a leaked table useless."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX = "kds"


@dataclass(frozen=True)
class NewKey:
    key: str  # shown to the user once
    prefix: str
    key_hash: str


def generate_key() -> NewKey:
    prefix = secrets.token_hex(6)
    key = f"{PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    return NewKey(key=key, prefix=prefix, key_hash=hash_key(key))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def split_prefix(key: str) -> str | None:
    """The lookup prefix of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 12:
        return None
    return parts[1]


def matches(key: str, key_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), key_hash)
