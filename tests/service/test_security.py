"""Security properties besides the API key (test_api_key): unguessable job ids, artifacts
served only through their job, CORS only for the configured origins."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import files_of, wait_for

from jobs.settings import Settings
from jobs.store import new_job_id
from service.main import create_app


def test_job_ids_carry_128_random_bits() -> None:
    ids = [new_job_id() for _ in range(2000)]
    raw = [base64.urlsafe_b64decode(i + "==") for i in ids]
    assert all(len(r) == 16 for r in raw) and len(set(ids)) == len(ids)
    bits = np.unpackbits(np.frombuffer(b"".join(raw), np.uint8)).reshape(len(ids), 128)
    # Every bit position is a fair coin (a counter or a timestamp would fix some of them).
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 0.06)


@pytest.fixture(scope="module")
def finished(client: httpx.Client, images: dict[str, Path]) -> str:
    job_id = client.post(
        "/register",
        files=files_of(fixed=images["fixed2"], moving=images["moving2"]),
        data={"model": "tiny-2d", "steps": "1"},
    ).json()["job_id"]
    assert wait_for(client, job_id)["status"] == "succeeded"
    return job_id


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/{id}/artifacts/fixed",
        "/jobs/{id}/artifacts/inputs",
        "/jobs/{id}/inputs/fixed.nii.gz",
        "/jobs/{id}/artifacts/..%2Finputs%2Ffixed.nii.gz",
        "/jobs/{id}/artifacts/%2e%2e",
        "/jobs/{id}/artifacts/displacements/-1",
        "/jobs/{id}/artifacts/displacements/..%2F..",
        "/jobs/{id}/out/warped.nii.gz",
        "/storage/jobs/{id}/out/warped.nii.gz",
        "/jobs/{id}%2F..%2F{id}/artifacts/warped",
        "/jobs/..%2F{id}/artifacts/warped",
    ],
)
def test_only_published_artifacts_are_served(
    client: httpx.Client, finished: str, path: str
) -> None:
    response = client.get(path.format(id=finished))
    assert response.status_code in (404, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"


def test_an_unfinished_job_serves_nothing(
    client: httpx.Client, store: object, settings: Settings
) -> None:
    from jobs.storage import Storage
    from jobs.store import Job, JobStore

    assert isinstance(store, JobStore)
    job = store.create(Job(id=new_job_id(), kind="pair"))  # queued, never dispatched
    out = Storage(settings.storage_dir).out(job.id)
    out.mkdir(parents=True)
    (out / "warped.nii.gz").write_bytes(b"a half-made answer")
    try:
        assert client.get(f"/jobs/{job.id}/artifacts/warped").status_code == 409
    finally:
        store.delete(job.id)
        Storage(settings.storage_dir).remove(job.id)


@pytest.mark.parametrize("origins", [[], ["https://viewer.example.org"]])
def test_cors_answers_only_configured_origins(settings: Settings, origins: list[str]) -> None:
    client = TestClient(create_app(settings.model_copy(update={"cors_origins": origins})))
    for origin in ("https://evil.example", "null", "https://viewer.example.org.evil.example"):
        simple = client.get("/models", headers={"Origin": origin})
        assert "access-control-allow-origin" not in simple.headers
        preflight = client.options(
            "/jobs/x", headers={"Origin": origin, "Access-Control-Request-Method": "DELETE"}
        )
        assert "access-control-allow-origin" not in preflight.headers
    allowed = client.get("/models", headers={"Origin": "https://viewer.example.org"})
    assert allowed.headers.get("access-control-allow-origin") == (
        "https://viewer.example.org" if origins else None
    )
    assert "access-control-allow-credentials" not in allowed.headers
