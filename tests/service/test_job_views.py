"""The routes the web page reads besides the API's own: the job list (``GET /jobs``, only with
an API key) and a job's uploaded inputs (``GET /jobs/{id}/inputs/{role}``); and the page,
its files and the docs, all served by the gateway."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from support import assert_problem, files_of, wait_for

from jobs.settings import Settings
from service.main import create_app

KEY = "page-key"


@pytest.fixture(scope="module")
def locked(settings: Settings) -> TestClient:
    app = create_app(settings.model_copy(update={"api_key": SecretStr(KEY)}))
    return TestClient(app, headers={"X-API-Key": KEY})


def _submit(client: httpx.Client | TestClient, images: dict[str, Path], **extra: Path) -> str:
    files = files_of(fixed=images["fixed2"], moving=images["moving2"], **extra)
    response = client.post("/register", files=files, data={"model": "tiny-2d", "steps": "1"})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def test_without_a_key_jobs_are_not_listed(client: httpx.Client) -> None:
    assert_problem(client.get("/jobs"), 403, "RIIR_API_KEY")


def test_with_a_key_recent_jobs_are_listed_newest_first(
    locked: TestClient, images: dict[str, Path], client: httpx.Client
) -> None:
    first, second = _submit(locked, images), _submit(locked, images)
    listed = [job["job_id"] for job in locked.get("/jobs", params={"limit": 200}).json()["jobs"]]
    assert listed.index(second) < listed.index(first)
    assert [j["job_id"] for j in locked.get("/jobs", params={"limit": 1}).json()["jobs"]] == [
        second
    ]
    assert locked.get("/jobs", params={"limit": 0}).status_code == 422
    assert locked.get("/jobs", headers={"X-API-Key": "wrong"}).status_code == 401
    for job_id in (first, second):
        wait_for(client, job_id)
        locked.delete(f"/jobs/{job_id}")


def test_inputs_are_served_as_uploaded(client: httpx.Client, images: dict[str, Path]) -> None:
    job_id = _submit(
        client, images, fixed_labels=images["fixed2_labels"], moving_labels=images["moving2_labels"]
    )
    job = client.get(f"/jobs/{job_id}").json()  # served while queued or running too
    assert set(job["inputs"]) == {"fixed", "moving", "fixed_labels", "moving_labels"}
    for role, image in (("fixed", "fixed2"), ("moving_labels", "moving2_labels")):
        response = client.get(job["inputs"][role])
        assert response.status_code == 200
        assert response.content == images[image].read_bytes()
        assert response.headers["content-type"] == "application/gzip"
    wait_for(client, job_id)
    assert_problem(client.get(f"/jobs/{job_id}/inputs/series"), 404, "series")
    assert client.get(f"/jobs/{job_id}/inputs/warped").status_code == 422  # roles only
    assert_problem(client.get(f"/jobs/{'B' * 22}/inputs/fixed"), 404, "no job")
    client.delete(f"/jobs/{job_id}")
    assert client.get(f"/jobs/{job_id}").json()["inputs"] == {}
    assert_problem(client.get(f"/jobs/{job_id}/inputs/fixed"), 404, "fixed")


def test_inputs_need_the_key(locked: TestClient) -> None:
    response = locked.get(f"/jobs/{'A' * 22}/inputs/fixed", headers={"X-API-Key": "wrong"})
    assert response.status_code == 401


def _local_assets(html: str) -> list[str]:
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert urls
    for url in urls:  # nothing from another host: the page works without internet
        assert not re.match(r"^(https?:)?//", url), url
    return [u for u in urls if not u.startswith("#")]


@pytest.mark.parametrize("locked_server", [False, True])
def test_the_page_and_its_files_are_served(
    settings: Settings, locked_server: bool, client: httpx.Client
) -> None:
    key = {"api_key": SecretStr(KEY)} if locked_server else {}
    app = TestClient(create_app(settings.model_copy(update=key)))
    page = app.get("/")  # open even with a key: it holds no data, its scripts send the key
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for url in _local_assets(page.text):
        if url in ("docs", "redoc"):
            continue
        assert app.get(f"/{url}").status_code == 200, url
    for module in ("app", "api", "form", "jobs", "metrics", "nifti", "derive", "viewer"):
        script = app.get(f"/static/js/{module}.js")
        assert script.status_code == 200
        assert "http://" not in script.text and "https://" not in script.text
    assert app.get("/static/../main.py").status_code == 404


def test_docs_are_served_from_vendored_files(client: httpx.Client) -> None:
    for route in ("/docs", "/redoc"):
        page = client.get(route)
        assert page.status_code == 200
        for url in _local_assets(page.text):
            assert client.get(url).status_code == 200, url
    assert "fonts.googleapis" not in client.get("/redoc").text
