"""DELETE /jobs/{id}: a queued job never runs, a running job stops at its next step, and the
worker carries on with the next job."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import blobs
from support import files_of, wait_for, write_nifti

from jobs import broker
from jobs.settings import Settings
from jobs.store import Job, JobStore, new_job_id


@pytest.fixture(scope="module")
def slow_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3-D pair that takes many seconds at 50 steps on a CPU: cancelled long before."""
    folder = tmp_path_factory.mktemp("slow")
    return {
        "fixed": write_nifti(folder / "f.nii.gz", blobs((64, 64, 64), seed=7)),
        "moving": write_nifti(folder / "m.nii.gz", blobs((64, 64, 64), seed=8)),
    }


def test_cancel_queued_and_running_jobs(
    client: httpx.Client,
    images: dict[str, Path],
    slow_pair: dict[str, Path],
    settings: Settings,
    store: JobStore,
) -> None:
    slow = client.post(
        "/register", files=files_of(**slow_pair), data={"model": "tiny-3d", "steps": "50"}
    ).json()["job_id"]
    running = wait_for(
        client, slow, ("running",), timeout=60, condition=lambda job: job["progress"]["done"] >= 1
    )
    assert running["progress"]["total"] == 50 + 3  # + resampling, the inverse, the artifacts

    # One worker, one job at a time, prefetch 1: this one waits in the queue.
    queued = client.post(
        "/register",
        files=files_of(fixed=images["fixed2"], moving=images["moving2"]),
        data={"model": "tiny-2d", "steps": "2"},
    ).json()["job_id"]
    assert client.get(f"/jobs/{queued}").json()["status"] == "queued"
    response = client.delete(f"/jobs/{queued}")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert not (settings.storage_dir / "jobs" / queued).exists()

    response = client.delete(f"/jobs/{slow}")
    assert response.json()["status"] == "cancelled"

    # The worker stops the slow job at its next step and takes the next job at once.
    after = client.post(
        "/register",
        files=files_of(fixed=images["fixed2"], moving=images["moving2"]),
        data={"model": "tiny-2d", "steps": "2"},
    ).json()["job_id"]
    assert wait_for(client, after, timeout=30)["status"] == "succeeded"

    # The task itself says it stopped at a step ("discarded" would mean it ran to the end).
    outcome = broker.make_client(settings).AsyncResult(slow).get(timeout=30)
    assert outcome == {"job_id": slow, "status": "cancelled"}
    slow_job = client.get(f"/jobs/{slow}").json()
    assert slow_job["status"] == "cancelled"  # the worker did not overwrite it
    assert slow_job["progress"]["done"] < 50
    assert slow_job["artifacts"] == {}
    assert not (settings.storage_dir / "jobs" / slow).exists()
    queued_job = store.get(queued)
    assert queued_job is not None and queued_job.started_at is None  # it never ran
    assert client.get(f"/jobs/{slow}/artifacts/warped").status_code == 404


def test_delete_a_finished_job_removes_its_files(
    client: httpx.Client, images: dict[str, Path], settings: Settings
) -> None:
    job_id = client.post(
        "/register",
        files=files_of(fixed=images["fixed2"], moving=images["moving2"]),
        data={"model": "tiny-2d", "steps": "1"},
    ).json()["job_id"]
    assert wait_for(client, job_id)["status"] == "succeeded"
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert response.json()["artifacts"] == {}
    assert response.json()["files_deleted"] is True  # why a succeeded job has no artifacts
    assert client.get(f"/jobs/{job_id}").json()["files_deleted"] is True
    assert not (settings.storage_dir / "jobs" / job_id).exists()
    assert client.get(f"/jobs/{job_id}/artifacts/displacement").status_code == 404
    assert client.delete(f"/jobs/{job_id}").status_code == 200  # idempotent


def test_worker_survives_a_bad_input(
    client: httpx.Client, store: JobStore, settings: Settings, images: dict[str, Path]
) -> None:
    """An input that is bad in a way only reading it shows: the job fails with the reason,
    and the same worker runs the next job."""
    job = Job(
        id=new_job_id(),
        kind="pair",
        params={"model": "tiny-2d", "steps": 1},
        inputs={"fixed": "fixed.nii.gz", "moving": "moving.nii.gz"},
    )
    inputs = settings.storage_dir / "jobs" / job.id / "inputs"
    inputs.mkdir(parents=True)
    (inputs / "fixed.nii.gz").write_bytes(images["fixed2"].read_bytes())
    (inputs / "moving.nii.gz").write_bytes(np.random.default_rng(1).bytes(3000))
    store.create(job)
    broker.dispatch(broker.make_client(settings), job)
    failed = wait_for(client, job.id)
    assert failed["status"] == "failed"
    assert "moving image" in failed["error"] and "NIfTI" in failed["error"]

    ok = client.post(
        "/register",
        files=files_of(fixed=images["fixed2"], moving=images["moving2"]),
        data={"model": "tiny-2d", "steps": "1"},
    ).json()["job_id"]
    assert wait_for(client, ok)["status"] == "succeeded"
