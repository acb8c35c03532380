"""What the client raises: one base, an API error per problem+json response, and a
connection error once retries are spent."""

from __future__ import annotations

from typing import Any


class KDServeClientError(Exception):
    """Base of everything :class:`~client.KDServeClient` raises on purpose."""


class KDServeAPIError(KDServeClientError):
    """The server answered with a non-2xx status and an RFC 9457 problem body.

    ``code`` is the stable machine-readable field (``not_found``, ``invalid``, ``conflict``,
    ``unauthorized``...); ``detail`` is the human sentence; ``errors`` lists field errors of
    a 422 when the server sent them; ``retry_after`` is the response's ``Retry-After`` in
    seconds (a ``429`` or ``503`` says when to try again), None when it sent none.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title
        self.errors = errors
        self.retry_after = retry_after


class KDServeConnectionError(KDServeClientError):
    """The server could not be reached (or kept failing) after the client's retries."""
