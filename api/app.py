"""``create_app()``: the FastAPI application; the lifespan builds engines and clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.datasets.endpoints import router as datasets_router
from api.health.endpoints import router as health_router
from api.jobs.endpoints import router as jobs_router
from api.kit import errors
from api.kit.deps import Services
from api.teachers.endpoints import router as teachers_router
from store.blobs import store_from_settings
from store.db import make_engine, make_sessionmaker
from store.queue import make_celery
from store.settings import Settings
from store.settings import settings as default_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or default_settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.db_url, pool_size=settings.database_pool_size)
        app.state.services = Services(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            store=store_from_settings(settings),
            celery=make_celery(settings),
        )
        yield
        engine.dispose()

    app = FastAPI(
        title="kdserve",
        version="1.0.0",
        summary="Knowledge distillation as a service: KD and FitNets.",
        lifespan=lifespan,
        # Counted while reading (not trusted from Content-Length): 413 past the limit.
        max_body_size=settings.max_upload_bytes + 1024 * 1024,
    )
    errors.install(app)
    for router in (health_router, teachers_router, datasets_router, jobs_router):
        app.include_router(router)
    return app
