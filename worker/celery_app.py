"""The Celery application of the workers: ``celery -A worker.celery_app worker``.

Configuration comes from ``service.broker.celery_config`` (shared with the gateway) and is
read lazily, when Celery first needs it, not when this module is imported. Nothing here
imports torch: the pool's child process imports it (``worker_process_init``), so the parent
never holds CUDA or a model across ``fork``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from service.broker import celery_config
from service.settings import get_settings

log = logging.getLogger(__name__)

app = Celery("riir", include=["worker.tasks"])
app.add_defaults(lambda: celery_config(get_settings()))


@worker_process_init.connect
def _warm_up(**_: Any) -> None:
    """Import the inference stack (torch) in each pool process before its first job, so
    the first job's timing is the model's, not the import's. Models load on first use
    (``worker.engine`` caches them per process)."""
    import worker.pipeline  # noqa: F401

    log.info("inference stack imported in the worker process")
