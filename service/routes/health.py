"""``GET /health`` (the process is up) and ``GET /ready`` (it can take jobs)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from jobs import broker
from service.deps import CeleryDep, SettingsDep, StoreDep, require_api_key
from service.errors import Unavailable, problem_responses
from service.schemas import Health, Ready

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Liveness: the gateway answers")
async def health() -> Health:
    return Health()


@router.get(
    "/ready",
    response_model=Ready,
    responses=problem_responses(401, 503),
    dependencies=[Depends(require_api_key)],
    summary="Readiness: Redis answers and at least one worker answers a ping",
)
async def ready(settings: SettingsDep, store: StoreDep, celery: CeleryDep) -> Ready:
    try:
        await run_in_threadpool(store.redis.ping)
    except Exception as exc:  # any failure to reach Redis means "not ready", with the reason
        raise Unavailable(f"Redis is unreachable ({type(exc).__name__})") from None
    names = await run_in_threadpool(broker.workers, celery, settings.ready_timeout_s)
    if not names:
        raise Unavailable(
            f"no worker answered within {settings.ready_timeout_s} s; jobs would wait in the queue"
        )
    return Ready(workers=names)
