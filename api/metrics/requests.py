"""Request counts and latencies, by route template: a pure ASGI middleware.

Labels are the route *template* (``/v1/jobs/{job_id}``, never the path sent), the method
(unknown methods as ``other``) and the status code, so the number of series is bounded by the
routes the app declares. A request no route took (a 401 the gate answered before routing)
is matched against the published paths here; one that matches none is ``unmatched``.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which runs the app in a task and
copies each response through a stream: this adds two clock reads, a dictionary lookup and two
increments to each request (the job-status path is a latency benchmark target).

Under ``kdserve api --workers N`` every process writes its values to the files of
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, chosen when the library
is imported), and whichever process answers a scrape sums them: see :mod:`api.metrics.scrape`.
"""

from __future__ import annotations

import re
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
# Seconds. Most requests take milliseconds; uploads and large downloads take minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class RequestMetrics:
    """The API process's own metrics.

    Args:
        registry: Where they are registered: a registry of the app's own in single-process
            mode; None in multiprocess mode, where the files are what a scrape reads.
    """

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.registry = registry
        self.requests = Counter(
            "kdserve_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "kdserve_http_request_duration_seconds",
            "Time from a request's arrival until the app returned, by route template and method.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Labelled children, looked up once per label set (labels() takes a lock and checks
        # its arguments on every call).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
            self._children[key] = children
        count, latency = children
        count.inc()
        latency.observe(seconds)


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = _Templates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # An exception before the response started becomes Starlette's 500.
        status = 500

        async def send_and_see(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            if route == UNMATCHED:
                route = self.templates.find(scope)
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.observe(method, route, status, seconds)


def route_template(scope: Scope) -> str:
    """The path template of the route that took the request (left in ``scope["route"]``;
    the routers declare their prefixes, so a route's path is its whole template)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


class _Templates:
    """The templates of the OpenAPI document's paths, to name requests no route took: the
    gate answers a ``/v1/`` request without a valid key before routing. (Matched against the
    published paths rather than the router's internals, which FastAPI reorganises.)"""

    def __init__(self) -> None:
        self._paths: list[tuple[re.Pattern[str], frozenset[str], str]] | None = None

    def find(self, scope: Scope) -> str:
        if self._paths is None:
            document = scope["app"].openapi()
            self._paths = [
                (compile_path(path)[0], frozenset(m.upper() for m in operations), path)
                for path, operations in document.get("paths", {}).items()
            ]
        partial = None
        for pattern, methods, path in self._paths:
            if pattern.match(scope["path"]):
                if scope["method"] in methods or (scope["method"] == "HEAD" and "GET" in methods):
                    return path
                partial = partial or path  # the path matches, the method does not (405)
        return partial or UNMATCHED
