"""The HTTP API (FastAPI). It validates, stores and queues; it never imports torch."""
