"""Redis and the gateway restarted under running and queued jobs: nothing is lost, the
gateway answers 503 + Retry-After while Redis is away (at once, not after a hang) and
recovers by itself, and finished jobs stay downloadable through a new gateway."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from fault_worker import expected_bytes
from helpers import blobs
from stack import Stack, wait_until
from support import files_of, write_nifti

from jobs.store import Job

API_KEY = "k-" + "7" * 30


def _status(stack: Stack, job_id: str) -> str | None:
    """The job's status, or None while Redis is still coming back."""
    assert stack.store is not None
    try:
        job = stack.store.get(job_id)
    except redis.RedisError:
        return None
    return None if job is None else job.status


def test_redis_restart_under_running_and_queued_jobs(
    stack_factory: object, capsys: pytest.CaptureFixture[str]
) -> None:
    stack: Stack = stack_factory(lease_s=2, recovery_interval_s=1)  # type: ignore[operator]
    stack.start_worker(loglevel="INFO")
    _, url = stack.start_gateway(log_level="info", RIIR_API_KEY=API_KEY)
    rng = np.random.default_rng(1)
    running = stack.submit(
        {"fixed": rng.bytes(100), "moving": rng.bytes(100)}, steps=30, step_s=0.05
    )
    queued: list[Job] = [
        stack.submit({"fixed": rng.bytes(100), "moving": rng.bytes(100)}, steps=2) for _ in range(3)
    ]
    assert stack.store is not None
    store = stack.store
    wait_until(lambda: (j := store.get(running.id)) and j.progress_done >= 2, "a step", 20)

    stack.stop_redis()
    with httpx.Client(base_url=url, timeout=10, headers={"X-API-Key": API_KEY}) as client:
        for method, path in (
            ("GET", f"/jobs/{running.id}"),
            ("POST", "/register"),
            ("GET", "/ready"),
        ):
            started = time.monotonic()
            response = client.request(method, path)
            answered = time.monotonic() - started
            assert response.status_code == 503, (path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert int(response.headers["retry-after"]) > 0
            assert answered < 3.0, (path, answered)  # refused at once, never a hang
        assert client.get("/health").status_code == 200
        time.sleep(1.0)
        down_since = time.monotonic()
        stack.start_redis()  # same append-only files, same socket

        jobs = [running, *queued]
        wait_until(
            lambda: all(_status(stack, j.id) == "succeeded" for j in jobs),
            f"every job to succeed ({[_status(stack, j.id) for j in jobs]})",
            45,
            every=0.2,
        )
        recovered = time.monotonic() - down_since
        attempts = [store.get(j.id).attempts for j in jobs]  # type: ignore[union-attr]
        assert attempts[1:] == [1, 1, 1]  # the queued ones ran once
        for job in jobs:  # the gateway reconnected by itself
            response = client.get(f"/jobs/{job.id}")
            assert response.status_code == 200 and response.json()["status"] == "succeeded"
        wait_until(lambda: client.get("/ready").status_code == 200, "/ready", 10)
        assert client.get("/models", headers={"X-API-Key": "wrong"}).status_code == 401
    # Neither secret is in any log, through an outage and its errors included.
    logs = {name: stack.log(name, whole=True) for name in ("gateway", "worker", "redis")}
    assert "riir.register" in logs["worker"] and "Connection" in logs["worker"]  # INFO
    for name, text in logs.items():
        assert API_KEY not in text and stack.redis_password not in text, name
    with capsys.disabled():
        print(
            f"\n[reliability] Redis restart: {len(jobs)} jobs (1 running, 3 queued) "
            f"all succeeded {recovered:.1f} s after Redis came back (attempts "
            f"{attempts}); 503 + Retry-After in < 3 s while down; no secret in "
            f"{sum(len(t) for t in logs.values())} bytes of INFO logs"
        )


def test_gateway_restart_keeps_status_and_artifacts(stack_factory: object, tmp_path: Path) -> None:
    stack: Stack = stack_factory()  # type: ignore[operator]
    stack.start_worker()
    gateway, url = stack.start_gateway()
    pair = {
        "fixed": write_nifti(tmp_path / "f.nii.gz", blobs((32, 32), seed=1)),
        "moving": write_nifti(tmp_path / "m.nii.gz", blobs((32, 32), seed=2)),
    }
    with httpx.Client(base_url=url, timeout=10) as client:
        ids = [
            client.post(
                "/register", files=files_of(**pair), data={"model": "tiny-2d", "steps": "20"}
            ).json()["job_id"]
            for _ in range(3)
        ]
    stack.kill(gateway)  # SIGKILL while the jobs run or wait
    _, url = stack.start_gateway()
    with httpx.Client(base_url=url, timeout=10) as client:

        def all_done() -> bool:
            return all(client.get(f"/jobs/{i}").json()["status"] == "succeeded" for i in ids)

        wait_until(all_done, "the jobs to succeed", 30, every=0.2)
        for job_id in ids:
            job = client.get(f"/jobs/{job_id}").json()
            inputs = stack.settings.storage_dir / "jobs" / job_id / "inputs"
            response = client.get(job["artifacts"]["warped"])
            assert response.status_code == 200
            assert response.content == expected_bytes(inputs, "warped")
