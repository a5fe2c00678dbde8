"""The gateway: ``uvicorn service.main:create_app --factory``.

An application factory, not a module-level app, so settings are read when the server starts
(never at import) and tests can build apps with their own settings. Never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from conventions.version import __version__
from jobs import broker
from jobs.lease import recover
from jobs.settings import Settings, get_settings
from jobs.storage import Storage, cleanup
from jobs.store import JobStore
from service import errors
from service.deps import require_api_key
from service.metrics import RequestMetrics, make_registry
from service.routes import health, inputs, jobs, metrics, models, page, registrations

log = logging.getLogger("service")


async def _forever(what: str, interval_s: float, sweep: Callable[[], object]) -> None:
    while True:
        try:
            await run_in_threadpool(sweep)
        except Exception as exc:  # a Redis outage must not end the loop; the next retries
            log.warning("%s failed (%s: %s)", what, type(exc).__name__, exc)
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    store, storage, celery = app.state.store, app.state.storage, app.state.celery
    tasks = [
        asyncio.create_task(
            _forever(
                "retention cleanup",
                settings.cleanup_interval_s,
                lambda: cleanup(store, storage, settings.job_retention_s),
            )
        ),
        # Jobs whose worker died on a host that no worker restarts on: requeued here.
        asyncio.create_task(
            _forever(
                "lost-job recovery",
                settings.recovery_interval_s,
                lambda: recover(store, celery, settings.queue, grace_s=settings.lease_s),
            )
        ),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        store.redis.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.storage_dir.mkdir(parents=True, exist_ok=True)
    # With an API key, the schema needs the key too and the browsable docs are off (they
    # would fetch the schema without it): every route but /health is closed.
    locked = settings.api_key is not None
    app = FastAPI(
        title="RIIR registration service",
        version=__version__,
        lifespan=lifespan,
        openapi_url=None if locked else "/openapi.json",
        docs_url=None,  # served by service.routes.page from vendored files (offline)
        redoc_url=None,
        description="Medical image registration by a Recurrent Inference Image "
        "Registration network: upload, poll, download. Errors are RFC "
        "7807 problem details.",
    )
    app.state.settings = settings
    app.state.store = JobStore.from_url(settings.redis, settings.job_retention_s)
    app.state.storage = Storage(settings.storage_dir)
    app.state.celery = broker.make_client(settings)
    app.state.registry, requests = make_registry(app.state.store, settings.queue)

    if locked:

        @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_api_key)])
        def openapi() -> dict[str, Any]:
            return app.openapi()

    errors.install(app)
    app.include_router(health.router)  # /health is open; /ready checks the key itself
    for module in (registrations, jobs, inputs, models, metrics):
        app.include_router(module.router, dependencies=[Depends(require_api_key)])
    page.install(app, docs=not locked)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["X-API-Key", "Content-Type"],
        expose_headers=["Location"],
    )
    app.add_middleware(RequestMetrics, counter=requests)
    return app
