"""``create_app()``: the FastAPI application; the lifespan builds engines and clients."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from api.cache.endpoints import router as cache_router
from api.datasets.endpoints import router as datasets_router
from api.health.endpoints import router as health_router
from api.jobs.endpoints import router as jobs_router
from api.kit import errors
from api.kit.deps import Services
from api.kit.gate import Gate
from api.kit.keycache import KeyCache
from api.metrics.endpoints import router as metrics_router
from api.metrics.requests import RequestMetricsMiddleware
from api.metrics.scrape import new_request_metrics
from api.metrics.state import StateCollector, metrics_engine
from api.sweeps.endpoints import router as sweeps_router
from api.teachers.endpoints import router as teachers_router
from api.webhooks.endpoints import events as webhook_events
from api.webhooks.endpoints import router as webhooks_router
from store.backlog import service_queues
from store.blobs import BlobStore, store_from_settings
from store.db import make_async_sessionmaker, make_engine, make_read_engine, make_sessionmaker
from store.queue import make_celery
from store.settings import Settings
from store.settings import settings as default_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or default_settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # No pre-ping: a round trip on every request. A request that meets a connection the
        # database dropped gets a 503 (reads retry once: api.kit.deps.read_only), and
        # SQLAlchemy then replaces every older connection of the pool.
        engine = make_engine(settings.db_url, pool_size=settings.database_pool_size, pre_ping=False)
        read_engine = make_read_engine(settings.db_url, pool_size=settings.database_pool_size)
        store = store_from_settings(settings)
        celery = make_celery(settings)
        app.state.services = Services(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            readers=make_async_sessionmaker(read_engine),
            store=store,
            celery=celery,
            keys=KeyCache(settings.key_cache_ttl_s),
            db_slots=anyio.Semaphore(settings.database_pool_size),
        )
        app.state.state_collector = StateCollector(
            settings, metrics_engine(settings), service_queues(celery)
        )
        _sweep_unfinished_uploads(store)
        yield
        app.state.state_collector.close()
        engine.dispose()
        await read_engine.dispose()

    app = FastAPI(
        title="kdserve",
        version="1.0.0",
        summary="Knowledge distillation as a service: KD and FitNets.",
        lifespan=lifespan,
    )
    errors.install(app)
    # The key is checked before any body is read; bodies are bounded (JSON small, uploads
    # KDSERVE_MAX_UPLOAD_BYTES) and cut off when they stall.
    app.add_middleware(Gate, upload_paths=(teachers_router.prefix, datasets_router.prefix))
    # Outside the gate, so that its 401s and 413s are counted too.
    app.state.request_metrics = new_request_metrics()
    app.add_middleware(RequestMetricsMiddleware, metrics=app.state.request_metrics)
    for router in (
        health_router,
        metrics_router,
        teachers_router,
        datasets_router,
        jobs_router,
        sweeps_router,
        cache_router,
        webhooks_router,
    ):
        app.include_router(router)
    app.webhooks.include_router(webhook_events)  # documents what kdserve POSTs to them
    return app


# An upload still unfinished after this long belongs to an API process that was killed.
UNFINISHED_UPLOAD_MAX_AGE_S = 24 * 3600


def _sweep_unfinished_uploads(store: BlobStore) -> None:
    """Drop uploads that killed API processes left behind; storage trouble only delays it
    (the next start tries again), it never stops the API from starting."""
    try:
        removed = store.sweep_unfinished(UNFINISHED_UPLOAD_MAX_AGE_S)
    except Exception as exc:
        log.warning("could not sweep unfinished uploads: %s", exc)
        return
    if removed:
        log.info("removed %d unfinished uploads left by killed API processes", removed)
