"""Celery tasks: thin shells that run a job through ``worker.inference.pipeline`` and keep its
record.

The message carries only the job id. A task is idempotent: it refuses a job that already
ended (a duplicate delivery, or one cancelled while queued) or that a live worker holds
(``jobs.lease``); a job whose worker died runs again from its inputs, and its artifacts
are published all at once, never replacing a published set (``Storage.publish``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from conventions import artifacts, catalog, dicom
from conventions.errors import ModelNotFoundError, RiirError
from conventions.options import DicomRequest, Options, RegistrationOptions, SeriesOptions, check
from jobs.lease import Lease
from jobs.pacs import Pacs
from jobs.settings import Settings, get_settings
from jobs.storage import Storage
from jobs.store import ACTIVE, Job, JobStore
from worker.celery_app import app

log = logging.getLogger(__name__)
RECORD_ATTEMPTS = 8  # ~1 min of retries: 0.5, 1, 2, 4, 5, 5, 5 s
Progress = Callable[[int, int], None]
Compute = Callable[[Job, Path, Path, Progress, Settings], dict[str, Any]]


class JobCancelled(Exception):
    """Raised from the progress callback when the record says the job should stop."""


class LeaseLost(Exception):
    """Raised from the progress callback when another worker took the job over (this one
    stalled past its lease); the other run's answer is the one that counts."""


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


def _options(job: Job, kind: type[Options]) -> Options:
    """The request's options as the gateway validated them (``check`` refuses a record that
    was altered since, as bad input). A pair's params also hold the DICOM request, which
    ``DicomRequest.of`` reads."""
    options = check(kind, {k: v for k, v in job.params.items() if k in kind.model_fields})
    # Only shipped names reach here (the gateway checks); a path in a record is refused anyway.
    if options.model is not None and options.model not in catalog.names():
        raise ModelNotFoundError(f"unknown model '{options.model}'")
    return options


def _retrieve(
    request: DicomRequest, inputs: Path, pacs: Pacs, settings: Settings
) -> dict[str, str]:
    """Fetch the series the request names by UID (WADO-RS) and prepare them as uploads are
    prepared; a rerun after a crash fetches again into a clean folder."""
    names: dict[str, str] = {}
    for role in ("fixed", "moving"):
        reference = request.reference(role)
        if reference is None:
            continue
        study_uid, series_uid = reference
        fetched = inputs / f".{role}_retrieved"
        shutil.rmtree(fetched, ignore_errors=True)
        shutil.rmtree(inputs / f"{role}_dicom", ignore_errors=True)
        try:
            files = pacs.retrieve(study_uid, series_uid, fetched)
            names.update(
                dicom.prepare(
                    files,
                    inputs,
                    role,
                    f"the {role} series {series_uid}",
                    series_uid=series_uid,
                    limits=settings.limits,
                )
            )
        finally:
            shutil.rmtree(fetched, ignore_errors=True)
    return names


def _store_results(out: Path, pacs: Pacs) -> None:
    from conventions.dicom_export import read_results

    pacs.store(read_results(out))


def register_pair(
    job: Job, inputs: Path, out: Path, progress: Progress, settings: Settings
) -> dict[str, Any]:
    from worker.inference.pipeline import register_files

    request = DicomRequest.of(job.params)
    names = dict(job.inputs)
    pacs = None
    if request.reference("fixed") or request.reference("moving"):
        pacs = Pacs.from_settings(settings)
        names.update(_retrieve(request, inputs, pacs, settings))
    labels = {
        role: inputs / names[role] for role in ("fixed_labels", "moving_labels") if role in names
    }
    dicom_series = None
    if "fixed_dicom" in names and "moving_dicom" in names:
        dicom_series = (inputs / names["fixed_dicom"], inputs / names["moving_dicom"])
    report = register_files(
        inputs / names["fixed"],
        inputs / names["moving"],
        out,
        _options(job, RegistrationOptions),
        device=settings.device,
        progress=progress,
        limits=settings.limits,
        dicom_series=dicom_series,
        **labels,
    )
    if request.store and pacs is not None:
        # Before publishing: a job that says "succeeded" has its results in the PACS. (A rerun
        # after a crash past this point stores a second set, under new UIDs.)
        _store_results(out, pacs)
    return report


def register_series(
    job: Job, inputs: Path, out: Path, progress: Progress, settings: Settings
) -> dict[str, Any]:
    from worker.inference.pipeline import register_series_file

    return register_series_file(
        inputs / job.inputs["series"],
        out,
        _options(job, SeriesOptions),
        device=settings.device,
        progress=progress,
        limits=settings.limits,
    )


def run_job(
    job_id: str,
    compute: Compute,
    store: JobStore,
    storage: Storage,
    settings: Settings,
    worker: str,
) -> str:
    """Run one job and record its outcome; return the final status. Plain function: the
    Celery task only supplies its arguments, so tests can call it directly.

    Safe to deliver twice: an ended job is skipped, a job another live process holds the
    lease of is left to it, and artifacts are published once (``Storage.publish``)."""
    job = store.get(job_id)
    if job is None or job.status not in ACTIVE:
        log.info("job %s: skipped (%s)", job_id, "no record" if job is None else job.status)
        return "missing" if job is None else job.status
    lease = Lease(store.redis, job_id, settings.lease_s)
    if not lease.acquire():
        log.info("job %s: skipped (a live worker holds it)", job_id)
        return "skipped"
    try:
        return _run_leased(job_id, compute, store, storage, settings, worker, lease)
    finally:
        lease.release()


def _run_leased(
    job_id: str,
    compute: Compute,
    store: JobStore,
    storage: Storage,
    settings: Settings,
    worker: str,
    lease: Lease,
) -> str:
    if not store.start(job_id, worker):
        return "skipped"  # cancelled since it was read
    job = store.get(job_id)
    if job is None:
        return "missing"
    if job.attempts > settings.max_attempts:
        store.fail(
            job_id,
            f"the job was started {job.attempts - 1} times and its worker was "
            "lost each time (out of memory?); giving up",
        )
        return "failed"
    if not storage.published(job_id):  # else a killed run published before recording it
        outcome = _compute(job, compute, store, storage, settings, lease)
        if outcome is not None:
            return outcome
    out = storage.out(job_id)
    metrics = json.loads((out / artifacts.filename("metrics")).read_text())
    if not _patiently(lambda: store.succeed(job_id, metrics, artifacts.present(out))):
        return _drop_if_cancelled(job_id, store, storage) or "skipped"
    return "succeeded"


def _patiently(call: Callable[[], bool], attempts: int = RECORD_ATTEMPTS) -> bool:
    """Retry a record write while Redis restarts: the answer is on disk, so losing it for a
    blip would cost a whole rerun (a longer outage leaves it to lease recovery)."""
    for attempt in range(attempts):
        try:
            return call()
        except redis.RedisError as exc:
            if attempt == attempts - 1:
                raise
            log.warning("Redis unreachable (%s); retrying", exc)
            time.sleep(min(5.0, 0.5 * 2**attempt))
    return False


def _drop_if_cancelled(job_id: str, store: JobStore, storage: Storage) -> str | None:
    """Remove the files of a job cancelled (or deleted) under a run: "discarded"."""
    current = store.get(job_id)
    if current is None or current.status == "cancelled":
        storage.remove(job_id)
        return "discarded"
    return None


def _compute(
    job: Job, compute: Compute, store: JobStore, storage: Storage, settings: Settings, lease: Lease
) -> str | None:
    """Compute into a private folder and publish it; None on success, else the outcome."""
    job_id = job.id

    def progress(done: int, total: int) -> None:
        if lease.lost.is_set():
            raise LeaseLost(job_id)
        try:
            status = store.progress(job_id, done, total)
        except redis.RedisError as exc:  # Redis restarting: a lost progress report is fine
            log.warning("job %s: progress not recorded (%s)", job_id, exc)
            return
        if status in (None, "cancelled"):
            raise JobCancelled(job_id)
        if status != "running":  # requeued or ended by another run: that run counts
            raise LeaseLost(job_id)

    work = storage.work(job_id, lease.holder.token)
    lease.start_heartbeat()
    try:
        compute(job, storage.inputs(job_id), work, progress, settings)
        if lease.lost.is_set():
            raise LeaseLost(job_id)
        storage.publish(job_id, work)
    except JobCancelled:
        log.info("job %s: cancelled while running", job_id)
        storage.remove(job_id)
        return "cancelled"
    except LeaseLost:
        log.warning("job %s: another worker took the job over; this run stops", job_id)
        return "superseded"
    except RiirError as exc:  # bad input or model: the user's to fix; the worker carries on
        store.fail(job_id, str(exc))
        return "failed"
    except SoftTimeLimitExceeded:
        store.fail(job_id, f"the job ran past the time limit of {settings.job_time_limit_s} s")
        return "failed"
    except Exception as exc:
        # Cancelled after its last step, and its files deleted under the writer.
        dropped = _drop_if_cancelled(job_id, store, storage)
        if dropped:
            return dropped
        store.fail(job_id, f"internal error ({type(exc).__name__}); the worker log has the details")
        raise  # logged by Celery with its traceback
    return None


def _run(task: JobTask, job_id: str, compute: Compute) -> dict[str, str]:
    status = run_job(
        job_id, compute, task.store, task.storage, task.settings, task.request.hostname or "worker"
    )
    return {"job_id": job_id, "status": status}


@app.task(name="riir.register", base=JobTask, bind=True, acks_late=True, reject_on_worker_lost=True)
def register(self: JobTask, job_id: str) -> dict[str, str]:
    return _run(self, job_id, register_pair)


@app.task(
    name="riir.register_series", base=JobTask, bind=True, acks_late=True, reject_on_worker_lost=True
)
def register_series_task(self: JobTask, job_id: str) -> dict[str, str]:
    return _run(self, job_id, register_series)
