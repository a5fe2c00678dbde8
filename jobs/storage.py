"""The storage folder shared by the gateway and the workers: one folder per job.

Layout (``STORAGE`` is ``RIIR_STORAGE_DIR``; in compose, a named volume)::

    STORAGE/jobs/{job_id}/inputs/{role}.nii[.gz]   uploads, written by the gateway
    STORAGE/jobs/{job_id}/out/                     artifacts, published by the worker
    STORAGE/jobs/{job_id}/work/{token}/            one run's artifacts while it writes them

A run writes into its own ``work/{token}`` folder and publishes it by renaming it to
``out/`` (atomic, and refused when ``out/`` exists): readers see all the artifacts of one
run or none, and once a job's artifacts are published no later run replaces them.

Every path is built from a validated job id and names of our own, never from a client's
file name. Artifacts are served only from ``out/``, by name from
``conventions.artifacts.ARTIFACTS``.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from conventions import artifacts
from jobs.store import JobStore, is_job_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Storage:
    root: Path

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    def folder(self, job_id: str) -> Path:
        if not is_job_id(job_id):  # the id is the only client text that reaches a path
            raise ValueError(f"not a job id: {job_id!r}")
        return self.jobs / job_id

    def inputs(self, job_id: str) -> Path:
        return self.folder(job_id) / "inputs"

    def out(self, job_id: str) -> Path:
        return self.folder(job_id) / "out"

    def work(self, job_id: str, token: str) -> Path:
        """A run's private folder; earlier runs' leftovers (killed workers) are removed."""
        root = self.folder(job_id) / "work"
        if root.is_dir():
            for stale in root.iterdir():
                shutil.rmtree(stale, ignore_errors=True)
        return root / token

    def publish(self, job_id: str, work: Path) -> bool:
        """Rename a finished run's folder to ``out/``; False (and the run's files dropped)
        when another run published first, so the first complete answer stays."""
        try:
            work.rename(self.out(job_id))
            return True
        except OSError:  # ENOTEMPTY/EEXIST: published already (ENOENT: job deleted)
            if not self.out(job_id).is_dir():
                raise
            shutil.rmtree(work, ignore_errors=True)
            return False

    def published(self, job_id: str) -> bool:
        return (self.out(job_id) / artifacts.filename("metrics")).is_file()

    def create(self, job_id: str) -> Path:
        """The job's (new, empty) inputs folder."""
        folder = self.inputs(job_id)
        folder.mkdir(parents=True, exist_ok=False)
        return folder

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def artifact(self, job_id: str, name: str) -> Path | None:
        """Path of a finished artifact, or None when the job does not have it."""
        path = self.out(job_id) / artifacts.filename(name)
        return path if path.is_file() else None

    def frame_displacement(self, job_id: str, frame: int) -> Path | None:
        path = artifacts.frame_path(self.out(job_id), frame)
        return path if frame >= 0 and path.is_file() else None


def cleanup(store: JobStore, storage: Storage, retention_s: float, now: float | None = None) -> int:
    """Remove expired jobs (record and files) and orphan folders; return how many went.

    Idempotent and safe to run from several gateways at once. An orphan is a job folder
    without a record (an upload interrupted by a crash, or a record lost with Redis); it is
    removed once its folder is older than the retention, so uploads in flight are kept.
    """
    now = time.time() if now is None else now
    removed = 0
    for job_id in store.expired(now):
        storage.remove(job_id)
        store.delete(job_id)
        removed += 1
    if storage.jobs.is_dir():
        for folder in storage.jobs.iterdir():
            if not is_job_id(folder.name) or store.exists(folder.name):
                continue
            try:
                age = now - folder.stat().st_mtime
            except FileNotFoundError:
                continue
            if age > retention_s:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
    if removed:
        log.info("cleanup removed %d expired or orphaned jobs", removed)
    return removed
