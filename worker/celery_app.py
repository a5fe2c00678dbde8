"""The Celery application of the workers: ``celery -A worker.celery_app worker``.

Configuration comes from ``jobs.broker.celery_config`` (shared with the gateway) and is
read lazily, when Celery first needs it, not when this module is imported. Nothing here
imports torch: the pool's child process imports it (``worker_process_init``), so the parent
never holds CUDA or a model across ``fork``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready

from jobs.broker import celery_config
from jobs.lease import recover
from jobs.settings import Settings, get_settings
from jobs.store import JobStore

log = logging.getLogger(__name__)

app = Celery("riir", include=["worker.tasks"])
app.add_defaults(lambda: celery_config(get_settings()))


@worker_process_init.connect
def _warm_up(**_: Any) -> None:
    """Import the inference stack (torch) in each pool process before its first job, so
    the first job's timing is the model's, not the import's. Models load on first use
    (``worker.inference.engine`` caches them per process). The pool process is the
    worker's own, so its allocator keeps freed memory (``worker.inference.memory``)."""
    import worker.inference.pipeline  # noqa: F401
    from worker.inference.memory import keep_freed_memory

    keep_freed_memory()

    log.info("inference stack imported in the worker process")


@worker_ready.connect
def _recover_lost_jobs(sender: Any = None, **_: Any) -> None:
    """On start, send again the jobs whose worker is gone (killed, OOM, host rebooted),
    instead of leaving them to the broker's visibility timeout (hours); then keep looking
    every ``recovery_interval_s`` from this (main) process, for a worker that dies while
    this one runs (the gateway sweeps too: recovery needs only one of them alive)."""
    settings = get_settings()
    thread = threading.Thread(
        target=_recover_forever, args=(settings,), daemon=True, name="riir-recovery"
    )
    thread.start()


def _recover_forever(settings: Settings) -> None:
    store = JobStore.from_url(settings.redis, settings.job_retention_s)
    while True:
        try:
            recover(store, app, settings.queue, grace_s=settings.lease_s)
        except Exception as exc:  # Redis away: the next sweep retries
            log.warning("recovering lost jobs failed (%s: %s)", type(exc).__name__, exc)
        time.sleep(settings.recovery_interval_s)
