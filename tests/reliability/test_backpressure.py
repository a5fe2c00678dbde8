"""A full queue refuses new work with 503 + Retry-After before reading the upload, stores
nothing for it, and takes work again once the queue drains."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import blobs
from stack import Stack
from support import files_of, write_nifti

from jobs import broker
from service.main import create_app

LIMIT = 3


def test_queue_limit(
    stack_factory: object, tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack: Stack = stack_factory()  # type: ignore[operator]  # no worker: nothing drains
    monkeypatch.setenv("RIIR_MODELS_DIR", str(models))
    client = TestClient(create_app(stack.settings.model_copy(update={"max_queued": LIMIT})))
    pair = files_of(
        fixed=write_nifti(tmp_path / "f.nii.gz", blobs((32, 32), seed=1)),
        moving=write_nifti(tmp_path / "m.nii.gz", blobs((32, 32), seed=2)),
    )
    jobs = stack.settings.storage_dir / "jobs"

    accepted = [
        client.post("/register", files=pair, data={"model": "tiny-2d"}) for _ in range(LIMIT)
    ]
    assert [r.status_code for r in accepted] == [202] * LIMIT
    folders = set(jobs.iterdir())

    refused = client.post("/register", files=pair, data={"model": "tiny-2d"})
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["title"] == "Queue full"
    assert f"limit is {LIMIT}" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) > 0
    assert set(jobs.iterdir()) == folders  # nothing stored for the refused job
    assert stack.store is not None
    assert broker.queue_length(stack.store.redis, stack.settings.queue) == LIMIT

    assert client.delete(f"/jobs/{accepted[0].json()['job_id']}").status_code == 200
    assert client.post("/register", files=pair, data={"model": "tiny-2d"}).status_code == 202
