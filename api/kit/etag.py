"""Strong ETags of JSON bodies and ``If-None-Match`` → ``304 Not Modified`` (RFC 9110 §8.8.3,
§13.1.2), so a client polling a job gets an empty answer while nothing changed.

The tag is a hash of the exact bytes sent, so it changes whenever the body does, whatever
changed it; the row is still read, but nothing is sent again.
"""

from __future__ import annotations

import hashlib

from fastapi import Response
from pydantic import BaseModel

# Private: the body depends on the caller's key; a browser may keep it, but must ask again.
CACHE_CONTROL = "private, no-cache"


def etag_of(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag``: ``*``, or one of its comma-separated tags
    (weak comparison, as the RFC asks for this header: ``W/"x"`` matches ``"x"``)."""
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or etag in (t.removeprefix("W/") for t in tags)


def json_or_304(model: BaseModel, if_none_match: str | None) -> Response:
    """``model`` as JSON with its ETag, or a bodiless 304 when the client has it already."""
    body = model.model_dump_json().encode()
    etag = etag_of(body)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
