"""One scrape: the request metrics of every API process, then the state collector's."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.metrics.procdir import ENV
from api.metrics.requests import RequestMetrics


def multiprocess() -> bool:
    """Whether values go to files (the environment prometheus-client read on import)."""
    return bool(os.environ.get(ENV))


def new_request_metrics() -> RequestMetrics:
    # In multiprocess mode the files are the registry: a scrape sums every process's.
    return RequestMetrics(None if multiprocess() else CollectorRegistry())


def render(requests: RequestMetrics, state: Collector | None) -> bytes:
    """The text exposition format of everything, for this scrape."""
    # A registry per scrape, as prometheus-client's multiprocess guide recommends: the
    # metric objects are never registered where a MultiProcessCollector reads.
    registry = CollectorRegistry()
    if requests.registry is None:
        MultiProcessCollector(registry)
    else:
        registry.register(requests.registry)
    if state is not None:
        registry.register(state)
    return generate_latest(registry)
