"""SIGKILL a worker in the middle of a job: a restarted worker finishes it, its artifacts are
complete and the same as an uninterrupted run's, and a duplicate delivery changes nothing.

Recovery must be prompt (seconds), not Celery's visibility timeout (hours): see
``jobs.lease``. The numbers these tests print are the figures of docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
from fault_worker import FAKE_FILES, expected_bytes, input_digest
from stack import Stack, wait_until

from conventions import artifacts
from jobs import broker
from jobs.lease import Holder, Lease, lease_key

KILLS = 6  # kill/restart cycles in the loop (each ~2 s: a worker restart is most of it)
STEPS = 50
PUBLISHED = {artifacts.filename(n) for n in (*FAKE_FILES, "metrics")}


def _files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden temporaries included) -> its sha256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _assert_complete(stack: Stack, job_id: str) -> dict[str, str]:
    folder = stack.settings.storage_dir / "jobs" / job_id
    out, inputs = folder / "out", folder / "inputs"
    files = _files(out)
    assert set(files) == PUBLISHED, files  # all of them, and no temporary left behind
    for name in FAKE_FILES:
        assert (out / artifacts.filename(name)).read_bytes() == expected_bytes(inputs, name)
    assert '"input_sha256": "' + input_digest(inputs) in (out / "metrics.json").read_text()
    work = folder / "work"
    assert not work.exists() or not any(work.iterdir())  # the killed run's files are gone
    return files


def test_sigkill_loop(stack_factory: object, capsys: pytest.CaptureFixture[str]) -> None:
    stack: Stack = stack_factory(lease_s=3)  # type: ignore[operator]
    worker = stack.start_worker()
    assert stack.store is not None
    redis = stack.store.redis
    rng = np.random.default_rng(0)
    jobs: dict[str, dict[str, str]] = {}
    recovery: list[float] = []
    for i in range(KILLS):
        point = ("mid-compute", "mid-write")[i % 2]
        whole = i % 3 != 2  # two cycles in three kill the whole worker, else its pool process
        job = stack.submit(
            {"fixed": rng.bytes(4000), "moving": rng.bytes(4000)}, fault=point, steps=4
        )
        pid = stack.fault_marker(job.id, point)
        killed = time.monotonic()
        if whole:
            stack.kill(worker)
            worker = stack.start_worker(wait=False)
        else:
            os.kill(pid, signal.SIGKILL)  # Celery's main process lives and forks a new one
        done = stack.wait_for(job.id, timeout=30)
        recovery.append(time.monotonic() - killed)
        assert done.status == "succeeded", (done, stack.log("worker"))
        assert done.attempts == 2
        jobs[job.id] = _assert_complete(stack, job.id)
        key = lease_key(job.id)
        wait_until(lambda k=key: not redis.exists(k), "the lease's release", 5)

    # The killed deliveries' messages come back one day (the broker's visibility timeout):
    # deliver every job again now. Nothing runs twice, no file changes.
    for job_id in jobs:
        broker.dispatch(stack.celery, stack.store.get(job_id))  # type: ignore[union-attr, arg-type]
    ok = stack.submit({"fixed": rng.bytes(10), "moving": rng.bytes(10)})  # queued behind them
    assert stack.wait_for(ok.id).status == "succeeded"
    for job_id, files in jobs.items():
        record = stack.store.get(job_id)  # type: ignore[union-attr]
        assert record is not None and (record.status, record.attempts) == ("succeeded", 2)
        assert _assert_complete(stack, job_id) == files
    with capsys.disabled():
        print(
            f"\n[reliability] worker SIGKILLs: {KILLS} (mid-compute {KILLS - KILLS // 2}, "
            f"mid-write {KILLS // 2}); jobs lost 0, duplicated 0; recovery "
            f"max {max(recovery):.1f} s, mean {np.mean(recovery):.1f} s"
        )


def test_sigkill_a_real_registration(
    stack_factory: object, tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real pipeline (torch, tiny model): killed mid-steps, finished by a restarted
    worker, with the same displacement as a run that was never interrupted."""
    from helpers import blobs
    from support import write_nifti

    from conventions.options import RegistrationOptions
    from worker.inference.pipeline import register_files

    stack: Stack = stack_factory(lease_s=3)  # type: ignore[operator]
    worker = stack.start_worker(fake=False)
    # ~1.5 s of steps on a CPU: time to see the first step and kill the worker mid-way.
    fixed = write_nifti(tmp_path / "f.nii.gz", blobs((192, 192), seed=1))
    moving = write_nifti(tmp_path / "m.nii.gz", blobs((192, 192), seed=2))
    job = stack.submit(
        {"fixed": fixed.read_bytes(), "moving": moving.read_bytes()}, model="tiny-2d", steps=STEPS
    )
    assert stack.store is not None
    store = stack.store

    def stepping() -> bool:
        record = store.get(job.id)
        return record is not None and record.progress_done >= 1

    wait_until(stepping, "the first step", timeout=60, every=0.01)
    record = store.get(job.id)
    assert record is not None and record.progress_done < STEPS  # killed mid-way
    pool = psutil.Process(worker.process.pid).children()
    stack.kill(worker)
    wait_until(
        lambda: all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in pool),
        "the pool process to die",
        5,
    )
    stack.start_worker(fake=False, wait=False)
    done = stack.wait_for(job.id, timeout=90)
    assert done.status == "succeeded", (done, stack.log("worker"))
    # Every step, then resampling, the inverse and the artifacts: the second run went all the way.
    assert done.attempts == 2 and done.progress_done == done.progress_total == STEPS + 3

    import torch

    monkeypatch.setenv("RIIR_MODELS_DIR", str(models))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker (OMP_NUM_THREADS=1); 2 would crawl here
    try:
        register_files(
            fixed,
            moving,
            tmp_path / "local",
            RegistrationOptions(model="tiny-2d", steps=STEPS),
            device="cpu",
        )
    finally:
        torch.set_num_threads(threads)
    out = stack.settings.storage_dir / "jobs" / job.id / "out"
    assert set(artifacts.present(out)) == {
        "displacement",
        "transform",
        "inverse_displacement",
        "warped",
        "jacobian",
        "metrics",
        "preview",
    }
    for name in ("displacement", "warped"):
        served = np.asarray(nib.load(str(out / artifacts.filename(name))).dataobj)
        local = np.asarray(nib.load(str(tmp_path / "local" / artifacts.filename(name))).dataobj)
        np.testing.assert_allclose(served, local, rtol=1e-5, atol=1e-6)


# -- the lease, in-process ----------------------------------------------------------------
def test_lease_is_held_against_a_live_worker_and_taken_from_a_dead_one(
    stack_factory: object,
) -> None:
    stack: Stack = stack_factory()  # type: ignore[operator]
    assert stack.store is not None
    client = stack.store.redis
    first = Lease(client, "job-a", ttl_s=30)
    assert first.acquire()
    assert not Lease(client, "job-a", ttl_s=30).acquire()  # live holder (this process)

    dead = psutil.Popen(["true"])
    dead.wait()
    client.set(lease_key("job-b"), str(Holder(Holder.me().host, dead.pid, "x")), px=30_000)
    assert Lease(client, "job-b", ttl_s=30).acquire()  # same host, process gone: taken

    client.set(lease_key("job-c"), str(Holder("another-host", dead.pid, "x")), px=300)
    assert not Lease(client, "job-c", ttl_s=30).acquire()  # another host: its TTL decides
    time.sleep(0.35)
    assert Lease(client, "job-c", ttl_s=30).acquire()


def test_heartbeat_keeps_a_long_job_and_notices_a_takeover(stack_factory: object) -> None:
    stack: Stack = stack_factory()  # type: ignore[operator]
    assert stack.store is not None
    client = stack.store.redis
    lease = Lease(client, "job-d", ttl_s=0.3)
    assert lease.acquire()
    lease.start_heartbeat()
    time.sleep(0.8)  # well past the TTL: renewed every 0.1 s
    assert client.get(lease_key("job-d")) == str(lease.holder) and not lease.lost.is_set()
    client.set(lease_key("job-d"), "other:1:x")  # another worker took it over
    wait_until(lease.lost.is_set, "the lease to be noticed lost", timeout=2)
    lease.release()
    assert client.get(lease_key("job-d")) == "other:1:x"  # never released someone else's
