"""The Celery worker: validates uploaded teachers and datasets, runs distillation jobs through
``kdcore`` and reaps jobs whose worker died. Start it with ``celery -A worker.app worker``."""
