"""Celery as the gateway sees it: the configuration shared with the workers, and dispatch
by task name (the gateway never imports the tasks, nor torch with them).

A message carries only the job id; everything else is in the job record and the storage
folder, so a message is small and a redelivered one finds the same inputs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from celery import Celery

from jobs.settings import Settings
from jobs.store import Job, Kind

TASKS: dict[Kind, str] = {"pair": "riir.register", "series": "riir.register_series"}


def kombu_url(url: str) -> str:
    """Celery's spelling of a Redis URL: redis-py's ``unix:///path?db=N`` is kombu's
    ``redis+socket:///path?virtual_host=N``; TCP URLs are the same for both."""
    parts = urlsplit(url)
    if parts.scheme != "unix":
        return url
    db = parse_qs(parts.query).get("db", ["0"])[0]
    return f"redis+socket://{parts.path}?virtual_host={db}"


def celery_config(settings: Settings) -> dict[str, Any]:
    """One configuration for the gateway's client and the workers."""
    url = kombu_url(settings.redis)
    limit = settings.job_time_limit_s
    return {
        "broker_url": url,
        "result_backend": url,  # results are {job_id, status}; the job record holds the rest
        "result_expires": int(settings.job_retention_s),
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 4,
        # A request must not hang on a dead Redis: fail fast, the gateway answers 503.
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        "task_default_queue": settings.queue,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # A job is acknowledged only when it ended, and requeued if its worker process died,
        # so a crash (or a GPU node lost) never loses a job; one job at a time per process.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "task_time_limit": limit,
        "task_soft_time_limit": max(1, limit - min(60, limit // 10)),
        "task_track_started": True,
        # On a cold shutdown give a running job a few seconds, then requeue it.
        "worker_soft_shutdown_timeout": 5.0,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
    }


def make_client(settings: Settings) -> Celery:
    app = Celery("riir-gateway", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def dispatch(celery: Celery, job: Job) -> None:
    """Queue a job by task name; the Celery task id is the job id (to revoke it)."""
    celery.send_task(TASKS[job.kind], args=[job.id], task_id=job.id)


def revoke(celery: Celery, job_id: str) -> None:
    """Tell the workers to drop a queued job. A running job is stopped by the worker itself
    when it next reports progress and finds the record cancelled (no process is killed)."""
    celery.control.revoke(job_id)


def workers(celery: Celery, timeout: float) -> list[str]:
    """Names of the workers that answered a ping within ``timeout`` seconds."""
    replies = celery.control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)


def queue_length(client: redis.Redis, queue: str) -> int:
    """Jobs waiting in the broker (Celery's Redis transport keeps a queue as a list)."""
    return int(client.llen(queue))  # type: ignore[arg-type]
