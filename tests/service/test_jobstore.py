"""The job record's state machine, the worker's job runner, and retention cleanup, against
the session's real Redis (no worker needed)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from conventions.errors import InputError
from jobs.settings import Settings
from jobs.storage import Storage, cleanup
from jobs.store import Job, JobStore, new_job_id
from worker.tasks import run_job


@pytest.fixture
def job(store: JobStore, settings: Settings) -> Job:
    job = store.create(Job(id=new_job_id(), kind="pair", params={"steps": 2}))
    Storage(settings.storage_dir).create(job.id)
    return job


def test_job_ids_are_unguessable() -> None:
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 22 for i in ids)  # 128 random bits, URL-safe


def test_state_machine(store: JobStore, job: Job) -> None:
    assert store.counts()["queued"] >= 1
    assert store.progress(job.id, 1, 2) == "queued"  # not running: nothing written
    assert store.start(job.id, "w1")
    assert store.progress(job.id, 1, 2) == "running"
    assert store.start(job.id, "w2")  # redelivered after a worker crash
    record = store.get(job.id)
    assert record is not None
    assert (record.status, record.attempts, record.worker) == ("running", 2, "w2")
    assert store.succeed(job.id, {"ncc": 0.9}, ["warped"])
    assert not store.cancel(job.id)  # ended jobs stay as they ended
    assert not store.start(job.id, "w3")  # a duplicate delivery does not run it again
    record = store.get(job.id)
    assert record is not None
    assert (record.status, record.metrics, record.artifacts) == (
        "succeeded",
        {"ncc": 0.9},
        ["warped"],
    )


def test_cancel_wins_over_a_late_worker(store: JobStore, job: Job) -> None:
    assert store.start(job.id, "w1")
    assert store.cancel(job.id)
    assert store.progress(job.id, 2, 2) == "cancelled"
    assert not store.succeed(job.id, {}, [])
    assert not store.fail(job.id, "boom")
    record = store.get(job.id)
    assert record is not None and record.status == "cancelled"


def _compute(effect: Any) -> Any:
    def compute(job: Job, inputs: Path, out: Path, progress: Any, settings: Settings) -> Any:
        return effect(job, out, progress)

    return compute


def _write_metrics(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text('{"ok": true}')


def test_runner_records_success(store: JobStore, settings: Settings, job: Job) -> None:
    def effect(job: Job, out: Path, progress: Any) -> dict[str, Any]:
        progress(1, 2)
        progress(2, 2)
        _write_metrics(out)
        return {}

    storage = Storage(settings.storage_dir)
    assert run_job(job.id, _compute(effect), store, storage, settings, "w") == "succeeded"
    record = store.get(job.id)
    assert record is not None
    assert (record.progress_done, record.progress_total) == (2, 2)
    assert record.metrics == {"ok": True} and record.artifacts == ["metrics"]
    # A second delivery of the same message changes nothing.
    assert run_job(job.id, _compute(effect), store, storage, settings, "w") == "succeeded"
    assert store.get(job.id).attempts == 1  # type: ignore[union-attr]


def test_runner_fails_bad_input_with_its_message(
    store: JobStore, settings: Settings, job: Job
) -> None:
    def effect(job: Job, out: Path, progress: Any) -> None:
        raise InputError("moving image 'x.nii': the file is truncated")

    status = run_job(job.id, _compute(effect), store, Storage(settings.storage_dir), settings, "w")
    record = store.get(job.id)
    assert status == "failed" and record is not None
    assert record.error == "moving image 'x.nii': the file is truncated"


def test_runner_stops_a_cancelled_job(store: JobStore, settings: Settings, job: Job) -> None:
    def effect(job: Job, out: Path, progress: Any) -> None:
        progress(1, 5)
        store.cancel(job.id)  # the client's DELETE, between two steps
        progress(2, 5)
        raise AssertionError("the runner should have stopped the job")

    storage = Storage(settings.storage_dir)
    assert run_job(job.id, _compute(effect), store, storage, settings, "w") == "cancelled"
    assert not storage.folder(job.id).exists()


def test_runner_gives_up_after_max_attempts(store: JobStore, settings: Settings, job: Job) -> None:
    for _ in range(settings.max_attempts):
        store.start(job.id, "crashed")
    status = run_job(
        job.id, _compute(lambda *a: None), store, Storage(settings.storage_dir), settings, "w"
    )
    record = store.get(job.id)
    assert status == "failed" and record is not None and "worker was lost" in record.error


def test_internal_errors_fail_the_job_and_propagate(
    store: JobStore, settings: Settings, job: Job
) -> None:
    def effect(job: Job, out: Path, progress: Any) -> None:
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError):
        run_job(job.id, _compute(effect), store, Storage(settings.storage_dir), settings, "w")
    record = store.get(job.id)
    assert record is not None and record.status == "failed"
    assert "internal error (RuntimeError)" in (record.error or "")


def test_cleanup_removes_expired_jobs_and_orphans(store: JobStore, settings: Settings) -> None:
    storage = Storage(settings.storage_dir)
    retention = 60.0
    old = store.create(Job(id=new_job_id(), kind="pair", created_at=time.time() - 3600))
    store.redis.zadd("riir:jobs:expiry", {old.id: time.time() - 1})
    storage.create(old.id)
    fresh = store.create(Job(id=new_job_id(), kind="pair"))
    storage.create(fresh.id)
    orphan, upload_in_flight = new_job_id(), new_job_id()
    storage.create(orphan)
    storage.create(upload_in_flight)
    stale = time.time() - 2 * retention
    os.utime(storage.folder(orphan), (stale, stale))

    assert cleanup(store, storage, retention) >= 2
    assert store.get(old.id) is None and not storage.folder(old.id).exists()
    assert not storage.folder(orphan).exists()
    assert store.get(fresh.id) is not None and storage.folder(fresh.id).exists()
    assert storage.folder(upload_in_flight).exists()
    assert old.id not in store.redis.smembers("riir:jobs:queued")


def test_runner_drops_results_of_a_job_cancelled_after_its_last_step(
    store: JobStore, settings: Settings, job: Job
) -> None:
    storage = Storage(settings.storage_dir)

    def effect(job: Job, out: Path, progress: Any) -> None:
        _write_metrics(out)
        store.cancel(job.id)  # DELETE arrives while the artifacts are written

    assert run_job(job.id, _compute(effect), store, storage, settings, "w") == "discarded"
    assert store.get(job.id).status == "cancelled"  # type: ignore[union-attr]
    assert not storage.folder(job.id).exists()


def test_runner_ignores_write_errors_of_a_cancelled_job(
    store: JobStore, settings: Settings, job: Job
) -> None:
    """DELETE removed the folder under the writer: not an internal error."""

    def effect(job: Job, out: Path, progress: Any) -> None:
        store.cancel(job.id)
        raise FileNotFoundError(out / "warped.nii.gz")

    status = run_job(job.id, _compute(effect), store, Storage(settings.storage_dir), settings, "w")
    assert status == "discarded"


def test_a_published_answer_is_recorded_without_computing_again(
    store: JobStore, settings: Settings, job: Job
) -> None:
    """The worker was killed after publishing and before recording: the next delivery
    records the published artifacts instead of computing different ones."""
    storage = Storage(settings.storage_dir)
    _write_metrics(storage.out(job.id))

    def effect(job: Job, out: Path, progress: Any) -> None:
        raise AssertionError("a published job must not be computed again")

    assert run_job(job.id, _compute(effect), store, storage, settings, "w") == "succeeded"
    assert store.get(job.id).metrics == {"ok": True}  # type: ignore[union-attr]


def test_the_first_complete_run_is_published_and_stays(settings: Settings, job: Job) -> None:
    storage = Storage(settings.storage_dir)
    first, second = storage.work(job.id, "a"), storage.work(job.id, "b")
    for run, text in ((first, "first"), (second, "second")):
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(text)
    assert storage.publish(job.id, first)
    assert not storage.publish(job.id, second)  # out/ exists: the rename is refused
    assert (storage.out(job.id) / "metrics.json").read_text() == "first"
    assert not second.exists()
    storage.work(job.id, "c")  # a new run clears what killed runs left
    assert not any((storage.folder(job.id) / "work").iterdir())
