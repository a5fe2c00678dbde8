"""The gateway's own sweep removes ended jobs, never-run uploads and orphan folders once the
retention period is over: records, inputs and artifacts alike."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import blobs
from stack import Stack, wait_until
from support import files_of, write_nifti

from jobs.storage import Storage
from jobs.store import new_job_id
from service.main import create_app

RETENTION_S = 1.0


def test_retention_sweep(
    stack_factory: object, tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack: Stack = stack_factory()  # type: ignore[operator]
    monkeypatch.setenv("RIIR_MODELS_DIR", str(models))
    settings = stack.settings.model_copy(
        update={"job_retention_s": RETENTION_S, "cleanup_interval_s": 0.2}
    )
    storage = Storage(settings.storage_dir)
    pair = files_of(
        fixed=write_nifti(tmp_path / "f.nii.gz", blobs((32, 32), seed=1)),
        moving=write_nifti(tmp_path / "m.nii.gz", blobs((32, 32), seed=2)),
    )
    app = create_app(settings)
    store = app.state.store  # the gateway's: records expire after ITS retention
    with TestClient(app) as client:  # the lifespan runs the sweep
        never_ran = client.post("/register", files=pair, data={"model": "tiny-2d"})
        assert never_ran.status_code == 202
        ended = client.post("/register", files=pair, data={"model": "tiny-2d"}).json()
        assert store.start(ended["job_id"], "w")
        out = storage.out(ended["job_id"])
        out.mkdir()
        (out / "metrics.json").write_text("{}")
        assert store.succeed(ended["job_id"], {}, ["metrics"])
        orphan = new_job_id()  # an upload cut off by a crash: a folder, no record
        storage.create(orphan)
        old = time.time() - 10 * RETENTION_S
        os.utime(storage.folder(orphan), (old, old))

        ids = [never_ran.json()["job_id"], ended["job_id"], orphan]
        assert all(storage.folder(i).exists() for i in ids)
        wait_until(
            lambda: not any(storage.folder(i).exists() for i in ids), "the sweep", 10 * RETENTION_S
        )
        for job_id in ids:
            assert client.get(f"/jobs/{job_id}").status_code == 404
        assert store.counts() == {s: 0 for s in store.counts()}
        assert not any(settings.storage_dir.joinpath("jobs").iterdir())
