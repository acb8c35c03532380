"""A webhook receiver for the tests: a real HTTP server on 127.0.0.1, in a thread, that
records every request and answers each with the next status of a script."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class Receiver:
    """Answers the n-th request with ``statuses[n]`` (the last one repeats), after
    ``delay_s``; a 3xx carries ``Location: location``."""

    def __init__(
        self,
        statuses: Sequence[int] = (200,),
        *,
        delay_s: float = 0.0,
        location: str = "",
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """``tls``: serve https with this context; ``host``: the name ``url`` uses (it must
        resolve to 127.0.0.1)."""
        self.statuses = list(statuses)
        self.delay_s = delay_s
        self.location = location
        self.host = host
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True  # a sleeping answer never holds up shutdown
        self.scheme = "http"
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/hooks"

    def wait_for(self, n: int, timeout: float) -> list[Received]:
        """The requests so far, once there are ``n`` of them (AssertionError at timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= n:
                    return list(self.received)
            time.sleep(0.05)
        raise AssertionError(f"{len(self.received)} requests in {timeout} s, expected {n}")

    @contextmanager
    def running(self) -> Iterator[Receiver]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()

    def _answer(self, request: Received) -> int:
        with self._lock:
            n = len(self.received)
            self.received.append(request)
        return self.statuses[min(n, len(self.statuses) - 1)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status = receiver._answer(Received(self.path, headers, body))
                time.sleep(receiver.delay_s)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


DOCS = Path(__file__).resolve().parents[1] / "docs" / "service.md"


def documented_verify() -> Callable[..., None]:
    """The ``verify`` function of the recipe in docs/service.md ("Verifying a delivery"),
    run as users would copy it: an implementation of the specification independent of
    the ``standardwebhooks`` library that signs."""
    text = DOCS.read_text()
    block = text.split("<!-- verify-recipe -->", 1)[1].split("<!-- /verify-recipe -->", 1)[0]
    code = block.split("```python", 1)[1].rsplit("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    verify: Callable[..., None] = namespace["verify"]
    return verify
