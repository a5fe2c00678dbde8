"""The service's own overhead: time from POST to ``succeeded`` minus the model's compute.

Starts the embedded stack exactly as a user would (``riir serve`` on a free port, embedded
Redis, one worker), registers small synthetic pairs one at a time, and for each job splits
the client's wall time (POST sent -> a poll sees ``succeeded``) into

- model:    ``seconds.model`` of metrics.json (the T recurrent steps),
- pipeline: the rest of ``seconds.total`` (reading, resampling, metrics, writing artifacts),
- service:  everything else (upload, validation, Redis, Celery, polling),

then submits a batch at once to measure jobs per minute with one worker. Not a test.

    python benchmarks/service_overhead.py --jobs 5 --batch 10

Without ``--models DIR`` it uses the shipped models when they are installed, else builds
untrained RIIR models of the paper's sizes in a temporary folder (overhead does not depend
on the weights; the compute column is then that of an untrained network of the same size).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np

POLL_S = 0.02


def blobs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    image = np.zeros(shape, np.float32)
    for _ in range(4):
        centre = [rng.uniform(0.3 * n, 0.7 * n) for n in shape]
        width = rng.uniform(0.12, 0.2) * min(shape)
        image += np.exp(
            -sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) / (2 * width**2)
        ).astype(np.float32)
    return image / image.max()


def write_pair(folder: Path, shape: tuple[int, ...]) -> tuple[Path, Path]:
    paths = []
    for role, seed in (("fixed", 0), ("moving", 1)):
        path = folder / f"{role}_{'x'.join(map(str, shape))}.nii.gz"
        nib.save(nib.Nifti1Image(blobs(shape, seed), np.eye(4)), str(path))
        paths.append(path)
    return paths[0], paths[1]


def untrained_models(folder: Path) -> dict[int, str]:
    """RIIR of the paper's sizes: [32, 16] for 2-D, [16, 16] for 3-D, T = 6."""
    import torch

    from model.networks.checkpoint import save_checkpoint
    from model.networks.riir import RIIR, RIIRConfig

    names = {}
    for dims, hidden in ((2, (32, 16)), (3, (16, 16))):
        torch.manual_seed(0)
        name = f"bench-{dims}d"
        model = RIIR(RIIRConfig(spatial_dims=dims, hidden_channels=hidden, steps=6))
        save_checkpoint(folder / f"{name}.pt", model, "riir", {"name": name, "version": "bench"})
        (folder / f"{name}.json").write_text(json.dumps({"name": name, "spatial_dims": dims}))
        names[dims] = name
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def submit(client: httpx.Client, pair: tuple[Path, Path], model: str, steps: int | None) -> str:
    files = {
        role: (path.name, path.read_bytes())
        for role, path in zip(("fixed", "moving"), pair, strict=True)
    }
    data = {"model": model, **({"steps": str(steps)} if steps else {})}
    response = client.post("/register", files=files, data=data)
    response.raise_for_status()
    return str(response.json()["job_id"])


def wait(client: httpx.Client, job_id: str) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
            return job
        time.sleep(POLL_S)


def one_job(
    client: httpx.Client, pair: tuple[Path, Path], model: str, steps: int | None
) -> dict[str, float]:
    start = time.perf_counter()
    job = wait(client, submit(client, pair, model, steps))
    wall = time.perf_counter() - start
    seconds = job["metrics"]["seconds"]
    return {"wall": wall, "model": seconds["model"], "total": seconds["total"]}


def row(label: str, runs: list[dict[str, float]]) -> str:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    overhead = sorted(r["wall"] - r["model"] for r in runs)
    service = statistics.median(r["wall"] - r["total"] for r in runs)
    worst = overhead[-1]
    return (
        f"| {label:<18} | {len(runs):>2} | {med('wall'):7.3f} | {med('model'):7.3f} | "
        f"{statistics.median(overhead):8.3f} | {worst:8.3f} | "
        f"{med('total') - med('model'):8.3f} | {service:7.3f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5, help="timed jobs per shape")
    parser.add_argument(
        "--batch",
        type=int,
        default=10,
        help="jobs submitted at once for the throughput figure (half 2-D, half 3-D)",
    )
    parser.add_argument("--steps", type=int, default=None, help="steps T (default: model's)")
    parser.add_argument("--models", type=Path, help="folder of models (RIIR_MODELS_DIR)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="riir-bench-"))
    models_dir = args.models
    names = {2: "cardiac-2d", 3: "hippocampus-3d"}
    untrained = False
    if models_dir is not None:
        cards = [json.loads(p.read_text()) for p in models_dir.glob("*.json")]
        names = {int(c["spatial_dims"]): c["name"] for c in cards}
    else:
        from conventions import catalog

        shipped = {card["name"] for card in catalog.list_models()}
        if not set(names.values()) <= shipped:
            models_dir = work / "models"
            models_dir.mkdir()
            names, untrained = untrained_models(models_dir), True
    pairs = {
        "2-D 128x128": (2, write_pair(work, (128, 128))),
        "3-D 64x64x64": (3, write_pair(work, (64, 64, 64))),
    }

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(RIIR_LOG_LEVEL="warning", RIIR_STORAGE_DIR=str(work / "storage"))
    if models_dir is not None:
        env["RIIR_MODELS_DIR"] = str(models_dir)
    log = open(work / "serve.log", "wb")  # noqa: SIM115
    serve = subprocess.Popen(
        [sys.executable, "-m", "riir.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if serve.poll() is not None:
                raise RuntimeError((work / "serve.log").read_text())
            time.sleep(0.2)
        ready_s = time.perf_counter() - started
        with httpx.Client(base_url=url, timeout=60) as client:
            results = {}
            for label, (dims, pair) in pairs.items():
                one_job(client, pair, names[dims], args.steps)  # warm-up: model load
                results[label] = [
                    one_job(client, pair, names[dims], args.steps) for _ in range(args.jobs)
                ]
            start = time.perf_counter()
            batch = [
                submit(client, pairs[label][1], names[pairs[label][0]], args.steps)
                for i in range(args.batch)
                for label in [list(pairs)[i % 2]]
            ]
            for job_id in batch:
                wait(client, job_id)
            per_minute = 60 * args.batch / (time.perf_counter() - start)
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(60)
        log.close()

    print(
        f"riir serve ready in {ready_s:.1f} s; models {names[2]} / {names[3]}"
        f"{' (untrained, paper sizes)' if untrained else ''}; steps "
        f"{args.steps or 'model default'}; polling every {POLL_S * 1000:.0f} ms"
    )
    print(
        "| job                | n  | wall s  | model s | overhead | worst    | pipeline | service |"
    )
    print(
        "|--------------------|----|---------|---------|----------|----------|----------|---------|"
    )
    for label, runs in results.items():
        print(row(label, runs))
    print(
        "wall: POST sent -> poll sees succeeded (median); overhead = wall - model (median, "
        "worst); pipeline = seconds.total - model (I/O, resampling, metrics, artifacts); "
        "service = wall - seconds.total (HTTP, validation, Redis, Celery, polling)"
    )
    print(
        f"throughput, one worker: {per_minute:.1f} jobs/minute ({args.batch} jobs submitted "
        "at once, alternating 2-D and 3-D)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
