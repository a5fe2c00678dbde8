"""The optional API key: when set, every route but /health needs X-API-Key."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from support import files_of

from jobs.settings import Settings
from service.main import create_app

KEY = "s3cret-key"
JOB = "/jobs/" + "A" * 22


@pytest.fixture(scope="module")
def locked(settings: Settings) -> TestClient:
    return TestClient(create_app(settings.model_copy(update={"api_key": SecretStr(KEY)})))


@pytest.fixture(scope="module")
def open_app(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", JOB),
        ("DELETE", JOB),
        ("GET", f"{JOB}/artifacts/warped"),
        ("GET", f"{JOB}/artifacts/displacements/0"),
        ("GET", f"{JOB}/inputs/fixed"),
        ("GET", "/jobs"),
        ("GET", "/models"),
        ("GET", "/metrics"),
        ("GET", "/ready"),
        ("POST", "/register"),
        ("POST", "/register-series"),
        ("GET", "/openapi.json"),
    ],
)
def test_every_route_but_health_needs_the_key(locked: TestClient, method: str, url: str) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}):
        response = locked.request(method, url, headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
    assert locked.get("/health").status_code == 200


def test_every_route_is_in_the_list_above(locked: TestClient) -> None:
    """A route added later without the key would fail here first."""
    schema = locked.get("/openapi.json", headers={"X-API-Key": KEY}).json()
    assert len([op for item in schema["paths"].values() for op in item]) == 12
    assert locked.get("/docs").status_code == 404  # the browsable docs are off with a key
    assert locked.get("/").status_code == 200  # the page holds no data; its scripts send the key


def test_the_key_opens_the_routes(locked: TestClient, worker: object) -> None:
    headers = {"X-API-Key": KEY}
    assert locked.get(JOB, headers=headers).status_code == 404
    assert locked.get("/models", headers=headers).status_code == 200
    assert locked.get("/ready", headers=headers).status_code == 200


def test_unauthorised_upload_stores_nothing(
    locked: TestClient, images: dict[str, Path], settings: Settings
) -> None:
    jobs = settings.storage_dir / "jobs"
    before = set(jobs.iterdir()) if jobs.is_dir() else set()
    response = locked.post(
        "/register", files=files_of(fixed=images["fixed2"], moving=images["moving2"])
    )
    assert response.status_code == 401
    assert (set(jobs.iterdir()) if jobs.is_dir() else set()) == before


def test_without_a_key_configured_no_header_is_needed(open_app: TestClient) -> None:
    assert open_app.get("/models").status_code == 200
    assert open_app.get(JOB).status_code == 404
