"""The gateway: ``uvicorn service.main:create_app --factory``.

An application factory, not a module-level app, so settings are read when the server starts
(never at import) and tests can build apps with their own settings. Never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from riir import __version__
from service import broker, errors
from service.deps import require_api_key
from service.jobstore import JobStore
from service.metrics import RequestMetrics, make_registry
from service.routes import health, jobs, metrics, models, registrations
from service.settings import Settings, get_settings
from service.storage import Storage, cleanup

log = logging.getLogger("service")


async def _cleanup_forever(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    while True:
        try:
            await run_in_threadpool(cleanup, app.state.store, app.state.storage,
                                    settings.job_retention_s)
        except Exception:  # a Redis outage must not end the loop; the next sweep retries
            log.exception("retention cleanup failed")
        await asyncio.sleep(settings.cleanup_interval_s)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    task = asyncio.create_task(_cleanup_forever(app))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        app.state.store.redis.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.storage_dir.mkdir(parents=True, exist_ok=True)
    app = FastAPI(title="RIIR registration service", version=__version__, lifespan=lifespan,
                  description="Medical image registration by a Recurrent Inference Image "
                              "Registration network: upload, poll, download. Errors are RFC "
                              "7807 problem details.")
    app.state.settings = settings
    app.state.store = JobStore.from_url(settings.redis, settings.job_retention_s)
    app.state.storage = Storage(settings.storage_dir)
    app.state.celery = broker.make_client(settings)
    app.state.registry, requests = make_registry(app.state.store, settings.queue)

    errors.install(app)
    app.include_router(health.router)  # /health is open; /ready checks the key itself
    for module in (registrations, jobs, models, metrics):
        app.include_router(module.router, dependencies=[Depends(require_api_key)])
    app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                       allow_methods=["GET", "POST", "DELETE"],
                       allow_headers=["X-API-Key", "Content-Type"],
                       expose_headers=["Location"])
    app.add_middleware(RequestMetrics, counter=requests)
    return app
