"""Celery tasks: thin shells that run a job through ``worker.pipeline`` and keep its record.

The message carries only the job id. A task is idempotent: it refuses a job that already
ended (a duplicate delivery, or one cancelled while queued), and a redelivered running job
(its worker died) simply runs again, overwriting the artifacts it had written atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from riir import artifacts, catalog
from riir.errors import ModelNotFoundError, RiirError
from service.jobstore import ACTIVE, Job, JobStore
from service.settings import Settings, get_settings
from service.storage import Storage
from worker.celery_app import app

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]
Compute = Callable[[Job, Path, Path, Progress, Settings], dict[str, Any]]


class JobCancelled(Exception):
    """Raised from the progress callback when the record says the job should stop."""


class JobTask(Task):  # type: ignore[misc]
    """One instance per worker process: the Redis client and settings are made once."""

    @cached_property
    def settings(self) -> Settings:
        return get_settings()

    @cached_property
    def store(self) -> JobStore:
        return JobStore.from_url(self.settings.redis, self.settings.job_retention_s)

    @cached_property
    def storage(self) -> Storage:
        return Storage(self.settings.storage_dir)


def _options(job: Job, settings: Settings) -> Any:
    from worker.pipeline import Options

    model = job.params.get("model")
    # Only shipped names reach here (the gateway checks); a path in a record is refused anyway.
    if model is not None and model not in {card["name"] for card in catalog.list_models()}:
        raise ModelNotFoundError(f"unknown model '{model}'")
    return Options(model=model, device=settings.device, steps=job.params.get("steps"),
                   init=job.params.get("init", "physical"),
                   similarity=job.params.get("similarity"))


def register_pair(job: Job, inputs: Path, out: Path, progress: Progress,
                  settings: Settings) -> dict[str, Any]:
    from worker.pipeline import register_files

    labels = {role: inputs / job.inputs[role] for role in ("fixed_labels", "moving_labels")
              if role in job.inputs}
    return register_files(inputs / job.inputs["fixed"], inputs / job.inputs["moving"], out,
                          _options(job, settings), progress=progress, limits=settings.limits,
                          **labels)


def register_series(job: Job, inputs: Path, out: Path, progress: Progress,
                    settings: Settings) -> dict[str, Any]:
    from worker.pipeline import register_series_file

    return register_series_file(inputs / job.inputs["series"], out, _options(job, settings),
                                template=int(job.params.get("template", -1)),
                                progress=progress, limits=settings.limits)


def artifact_names(out: Path) -> list[str]:
    """What the gateway may serve: contract names plus ``displacements/{frame}``."""
    names = artifacts.present(out)
    folder = out / artifacts.SERIES_DISPLACEMENTS
    stems = (p.name.removeprefix("frame_").removesuffix(".nii.gz")
             for p in folder.glob("frame_*.nii.gz"))
    frames = sorted(int(stem) for stem in stems if stem.isdigit())
    return names + [f"{artifacts.SERIES_DISPLACEMENTS}/{frame}" for frame in frames]


def run_job(job_id: str, compute: Compute, store: JobStore, storage: Storage,
            settings: Settings, worker: str) -> str:
    """Run one job and record its outcome; return the final status. Plain function: the
    Celery task only supplies its arguments, so tests can call it directly."""
    job = store.get(job_id)
    if job is None or job.status not in ACTIVE:
        log.info("job %s: skipped (%s)", job_id, "no record" if job is None else job.status)
        return "missing" if job is None else job.status
    if not store.start(job_id, worker):
        return "skipped"
    job = store.get(job_id)
    if job is None:
        return "missing"
    if job.attempts > settings.max_attempts:
        store.fail(job_id, f"the job was started {job.attempts - 1} times and its worker was "
                           "lost each time (out of memory?); giving up")
        return "failed"

    def progress(done: int, total: int) -> None:
        if store.progress(job_id, done, total) != "running":
            raise JobCancelled(job_id)

    out = storage.out(job_id)
    try:
        compute(job, storage.inputs(job_id), out, progress, settings)
        metrics = json.loads((out / artifacts.filename("metrics")).read_text())
    except JobCancelled:
        log.info("job %s: cancelled while running", job_id)
        storage.remove(job_id)
        return "cancelled"
    except RiirError as exc:  # bad input or model: the user's to fix; the worker carries on
        store.fail(job_id, str(exc))
        return "failed"
    except SoftTimeLimitExceeded:
        store.fail(job_id, f"the job ran past the time limit of {settings.job_time_limit_s} s")
        return "failed"
    except Exception as exc:
        current = store.get(job_id)
        if current is None or current.status != "running":
            # Cancelled after its last step, and its files deleted under the writer.
            storage.remove(job_id)
            return "discarded"
        store.fail(job_id, f"internal error ({type(exc).__name__}); the worker log has the "
                           "details")
        raise  # logged by Celery with its traceback
    if not store.succeed(job_id, metrics, artifact_names(out)):
        storage.remove(job_id)  # cancelled (or removed) after its last step: results dropped
        return "discarded"
    return "succeeded"


def _run(task: JobTask, job_id: str, compute: Compute) -> dict[str, str]:
    status = run_job(job_id, compute, task.store, task.storage, task.settings,
                     task.request.hostname or "worker")
    return {"job_id": job_id, "status": status}


@app.task(name="riir.register", base=JobTask, bind=True, acks_late=True,
          reject_on_worker_lost=True)
def register(self: JobTask, job_id: str) -> dict[str, str]:
    return _run(self, job_id, register_pair)


@app.task(name="riir.register_series", base=JobTask, bind=True, acks_late=True,
          reject_on_worker_lost=True)
def register_series_task(self: JobTask, job_id: str) -> dict[str, str]:
    return _run(self, job_id, register_series)
