"""``riir serve`` end to end: one command brings up Redis, a worker and the gateway; SIGINT
stops them all and leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from support import files_of, free_port, wait_for

pytestmark = pytest.mark.slow


def _start(tmp_path: Path, models_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RIIR_REDIS_URL")}
    env.update(
        RIIR_MODELS_DIR=str(models_dir),
        RIIR_DEVICE="cpu",
        RIIR_LOG_LEVEL="warning",
        OMP_NUM_THREADS="1",
    )  # spinning OpenMP threads crawl on a busy 2-core box
    with open(tmp_path / "serve.log", "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "riir.cli",
                "serve",
                "--port",
                str(port),
                "--storage",
                str(tmp_path / "storage"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_ready(serve: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        assert serve.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)


def _stop(serve: subprocess.Popen[bytes]) -> None:
    if serve.poll() is None:
        os.killpg(serve.pid, signal.SIGKILL)
    serve.wait()


def test_serve_runs_a_job_and_stops_cleanly(
    tmp_path: Path, models_dir: Path, images: dict[str, Path]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = _start(tmp_path, models_dir, port)
    try:
        _wait_ready(serve, url, tmp_path / "serve.log")

        children = psutil.Process(serve.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in children)
        assert "redis-server" in names and "celery" in names and "uvicorn" in names

        with httpx.Client(base_url=url, timeout=30) as client:
            response = client.post(
                "/register",
                files=files_of(fixed=images["fixed2"], moving=images["moving2"]),
                data={"model": "tiny-2d", "steps": "2"},
            )
            assert response.status_code == 202, response.text
            job = wait_for(client, response.json()["job_id"], timeout=180)  # cold worker
            assert job["status"] == "succeeded", job
            displacement = client.get(job["artifacts"]["displacement"]).content
        # The embedded Redis keeps its data under the storage folder (append-only file).
        assert any((tmp_path / "storage" / "redis").rglob("*.aof*"))

        serve.send_signal(signal.SIGINT)
        assert serve.wait(60) == 0, (tmp_path / "serve.log").read_text()
        time.sleep(0.2)
        alive = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [p.cmdline() for p in alive]
        # A healthy start looks healthy: no Redis or Celery warnings on the console (Redis
        # writes its notes to its own log file).
        printed = (tmp_path / "serve.log").read_text()
        assert "WARNING" not in printed and "SecurityWarning" not in printed, printed
        assert (tmp_path / "storage" / "redis" / "redis.log").is_file()
    finally:
        _stop(serve)

    # Started again on the same storage: the job record and its artifacts are still there.
    serve = _start(tmp_path, models_dir, port)
    try:
        _wait_ready(serve, url, tmp_path / "serve.log")
        again = httpx.get(f"{url}/jobs/{job['job_id']}").json()
        assert again["status"] == "succeeded" and again["metrics"] == job["metrics"]
        assert httpx.get(f"{url}{job['artifacts']['displacement']}").content == displacement
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(60)
        _stop(serve)
