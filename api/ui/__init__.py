"""The web dashboard: static files (a vanilla-JS single page) served at ``/ui``.

The page calls the same REST API as every other client, with the key the user typed in an
``Authorization: Bearer`` header, so the server needs no templates, sessions or cookies; the
files need no key (the gate checks ``/v1/`` only) and hold no data. Everything the page loads
comes from this folder, the charting library included (``vendor.json``), which is what lets
the Content-Security-Policy below say ``'self'`` and nothing else.
"""

from __future__ import annotations

from pathlib import Path

from starlette.datastructures import MutableHeaders
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).with_name("static")
PREFIX = "/ui"

# No inline script or style, nothing from another origin: an injected <script> cannot run and
# the key cannot be sent anywhere but this API (connect-src). blob: is the downloads' URLs.
CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The files change with the code; revalidating each load is cheap (ETag) and never stale.
    "Cache-Control": "no-cache",
}


class SecurityHeaders:
    """Add :data:`HEADERS` to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def dashboard() -> ASGIApp:
    """The dashboard's files as an ASGI app to mount at :data:`PREFIX` (``index.html`` for
    the folder itself)."""
    return SecurityHeaders(StaticFiles(directory=STATIC, html=True))
