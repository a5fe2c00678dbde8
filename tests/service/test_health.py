"""/health, /ready and CORS; and what clients get when Redis or the workers are away."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support import files_of

from jobs.settings import Settings
from service.main import create_app


def _app(settings: Settings, **update: object) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=update)))


def test_ready_without_workers_is_503(settings: Settings, worker: object) -> None:
    """Database 1 of the same Redis: a broker no worker listens on."""
    client = _app(settings, redis_url=settings.redis.replace("db=0", "db=1"), ready_timeout_s=0.3)
    assert client.get("/health").status_code == 200
    response = client.get("/ready")
    assert response.status_code == 503
    assert "no worker answered" in response.json()["detail"]


def test_redis_down_gives_503_and_stores_nothing(
    settings: Settings, tmp_path: Path, images: dict[str, Path], models_dir: Path
) -> None:
    storage = tmp_path / "storage"
    client = _app(settings, redis_url=f"unix://{tmp_path}/no-such.sock?db=0", storage_dir=storage)
    assert client.get("/health").status_code == 200
    for response in (
        client.get("/ready"),
        client.get("/jobs/" + "A" * 22),
        client.post(
            "/register",
            files=files_of(fixed=images["fixed2"], moving=images["moving2"]),
            data={"model": "tiny-2d"},
        ),
    ):
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert int(response.headers["retry-after"]) > 0
    jobs = storage / "jobs"
    assert not jobs.exists() or not any(jobs.iterdir())


@pytest.mark.parametrize("origin", ["https://viewer.example.org", "https://evil.example"])
def test_cors_preflight(settings: Settings, origin: str) -> None:
    from pydantic import SecretStr

    client = _app(settings, cors_origins=["https://viewer.example.org"], api_key=SecretStr("k"))
    response = client.options(
        "/register",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key",
        },
    )
    allowed = response.headers.get("access-control-allow-origin")
    if origin.startswith("https://viewer"):
        assert response.status_code == 200 and allowed == origin
    else:
        assert allowed is None
