"""``GET /metrics``: Prometheus metrics of the API processes (requests, latencies) and of the
service's state (jobs, queues, teacher cache, heartbeats), read when scraped.

Nothing here is imported by :mod:`api.metrics.procdir`, which must run before
prometheus-client is imported (the library picks its multiprocess mode on import).
"""
