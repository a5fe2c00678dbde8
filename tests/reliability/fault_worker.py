"""A Celery worker for fault injection: ``celery -A fault_worker worker`` (this folder on
PYTHONPATH). It is the production worker (``worker.celery_app``, ``worker.tasks``: the same
task, job runner, lease, staging and publication), with two test-only changes when
``RIIR_FAULT_FAKE=1``:

- the pair computation is a torch-free stand-in, so a killed worker restarts in about a
  second instead of re-importing torch; it writes the artifact files through the same
  atomic writers, with contents fixed by the inputs (so a rerun must give the same bytes);
- a job whose params say ``{"fault": point}`` stops at that point on its first attempt and
  announces it with a marker file ``$RIIR_FAULT_DIR/{job_id}.{point}``, waiting to be killed:
  ``mid-compute`` (half the steps done, nothing written) or ``mid-write`` (the displacement
  written and the warped image half written to its temporary name).
"""

from __future__ import annotations

import hashlib
import os
import time
import zlib
from pathlib import Path
from typing import Any

from celery.signals import worker_process_init

import worker.tasks
from conventions import artifacts
from conventions.imageio import atomic_path
from worker.celery_app import _warm_up, app  # noqa: F401  (celery -A finds ``app``)

FAKE_FILES = ("displacement", "warped", "jacobian")
FAKE_BYTES = 256 << 10  # each file: large enough that a write is not a single syscall


def expected_bytes(inputs: Path, name: str) -> bytes:
    """What the stand-in writes for artifact ``name`` of a job with these inputs."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(inputs.iterdir())))
    seed = digest.digest() + name.encode()
    return zlib.compress((seed * (FAKE_BYTES // len(seed) + 1))[:FAKE_BYTES], 1)


def input_digest(inputs: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(inputs.iterdir()))).hexdigest()


def _pause(job_id: str, point: str) -> None:
    folder = Path(os.environ["RIIR_FAULT_DIR"])
    (folder / f"{job_id}.{point}").write_text(str(os.getpid()))
    time.sleep(120)  # killed long before this ends


def fake_compute(job: Any, inputs: Path, out: Path, progress: Any, settings: Any) -> dict:
    fault = job.params.get("fault") if job.attempts == 1 else None
    steps = int(job.params.get("steps") or 4)
    for t in range(1, steps + 1):
        time.sleep(float(job.params.get("step_s", 0.02)))
        progress(t, steps)
        if fault == "mid-compute" and t == steps // 2:
            _pause(job.id, fault)
    out.mkdir(parents=True, exist_ok=True)
    for name in FAKE_FILES:
        data = expected_bytes(inputs, name)
        target = out / artifacts.filename(name)
        tmp = atomic_path(target)
        if fault == "mid-write" and name == "warped":
            tmp.write_bytes(data[: len(data) // 2])
            _pause(job.id, fault)
        tmp.write_bytes(data)
        os.replace(tmp, target)
    report = {"input_sha256": input_digest(inputs), "steps": steps}
    artifacts.write_json(report, out / artifacts.filename("metrics"))
    return report


if os.environ.get("RIIR_FAULT_FAKE") == "1":
    worker_process_init.disconnect(_warm_up)  # no torch in the pool process
    worker.tasks.register_pair = fake_compute
