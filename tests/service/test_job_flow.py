"""Submit -> poll -> download over real HTTP, compared with ``riir register``'s code path run
in this process on the same files and model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import files_of, wait_for

from conventions import artifacts
from conventions.options import RegistrationOptions, SeriesOptions
from jobs.settings import Settings
from service.main import create_app
from worker.inference.pipeline import register_files, register_series_file

PAIR_ARTIFACTS = {
    "displacement",
    "transform",
    "inverse_displacement",
    "warped",
    "jacobian",
    "metrics",
    "preview",
}


def _download(client: httpx.Client, url: str, path: Path) -> Path:
    response = client.get(url)
    assert response.status_code == 200, response.text
    path.write_bytes(response.content)
    return path


def _voxels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.mark.parametrize("dims", [2, 3])
def test_pair_matches_the_command_line_path(
    client: httpx.Client, images: dict[str, Path], tmp_path: Path, dims: int
) -> None:
    fixed, moving = images[f"fixed{dims}"], images[f"moving{dims}"]
    refine = 3 if dims == 2 else 0  # test-time refinement steps, counted in the progress
    native = 2 if dims == 2 else 0  # and those on the fixed image's own grid
    interpolation = "sinc" if dims == 2 else "bspline"
    response = client.post(
        "/register",
        files=files_of(fixed=fixed, moving=moving),
        data={
            "model": f"tiny-{dims}d",
            "steps": "2",
            "refine": str(refine),
            "refine_native": str(native),
            "interpolation": interpolation,
        },
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert response.headers["location"] == f"/jobs/{job_id}"
    assert response.json()["status"] == "queued"

    job = wait_for(client, job_id)
    assert job["status"] == "succeeded", job
    # The network's steps, the refinements', then resampling, the inverse and the artifacts.
    total = 2 + refine + native + 3
    assert job["progress"] == {"done": total, "total": total}
    assert job["metrics"]["refine"] == refine and job["metrics"]["refine_native"] == native
    assert job["metrics"]["interpolation"] == interpolation
    assert set(job["artifacts"]) == PAIR_ARTIFACTS
    assert job["timings"]["run_seconds"] > 0
    assert job["metrics"]["model"]["name"] == f"tiny-{dims}d"

    expected = register_files(
        fixed,
        moving,
        tmp_path / "local",
        RegistrationOptions(
            model=f"tiny-{dims}d",
            steps=2,
            refine=refine,
            refine_native=native,
            interpolation=interpolation,
        ),
        device="cpu",
    )
    for name in ("displacement", "inverse_displacement", "warped", "jacobian"):
        served = _download(client, job["artifacts"][name], tmp_path / artifacts.filename(name))
        local = tmp_path / "local" / artifacts.filename(name)
        assert _voxels(served).shape == _voxels(local).shape
        np.testing.assert_allclose(_voxels(served), _voxels(local), rtol=1e-5, atol=1e-6)
    metrics = client.get(job["artifacts"]["metrics"])
    assert metrics.headers["content-type"] == "application/json"
    served_metrics = metrics.json()
    assert served_metrics == job["metrics"]
    np.testing.assert_allclose(
        served_metrics["similarity_after"]["ncc"], expected["similarity_after"]["ncc"], rtol=1e-5
    )
    preview = client.get(job["artifacts"]["preview"])
    assert preview.headers["content-type"] == "image/png"
    assert preview.content.startswith(b"\x89PNG")


def test_labels_are_warped_and_scored(client: httpx.Client, images: dict[str, Path]) -> None:
    files = files_of(
        fixed=images["fixed2"],
        moving=images["moving2"],
        fixed_labels=images["fixed2_labels"],
        moving_labels=images["moving2_labels"],
    )
    job_id = client.post("/register", files=files, data={"model": "tiny-2d", "steps": "2"}).json()[
        "job_id"
    ]
    job = wait_for(client, job_id)
    assert job["status"] == "succeeded", job
    assert "labels" in job["artifacts"]
    assert 0.0 <= job["metrics"]["labels"]["after"]["dice_mean"] <= 1.0
    labels = client.get(job["artifacts"]["labels"])
    assert labels.status_code == 200


def test_series_gives_one_field_per_frame(
    client: httpx.Client, images: dict[str, Path], tmp_path: Path
) -> None:
    response = client.post(
        "/register-series",
        files=files_of(series=images["series2"]),
        data={"model": "tiny-2d", "steps": "2", "template": "-1"},
    )
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["job_id"])
    assert job["status"] == "succeeded", job
    # 3 frames x (2 steps + resampling), then the series' artifacts
    assert job["progress"] == {"done": 10, "total": 10}
    frames = sorted(name for name in job["artifacts"] if name.startswith("displacements/"))
    assert frames == ["displacements/0", "displacements/1", "displacements/2"]
    assert {"warped", "metrics", "preview"} <= set(job["artifacts"])

    register_series_file(
        images["series2"], tmp_path / "local", SeriesOptions(model="tiny-2d", steps=2), device="cpu"
    )
    served = _download(client, job["artifacts"]["displacements/0"], tmp_path / "frame0.nii.gz")
    local = artifacts.frame_path(tmp_path / "local", 0)
    np.testing.assert_allclose(_voxels(served), _voxels(local), rtol=1e-5, atol=1e-6)
    template = _voxels(
        _download(client, job["artifacts"]["displacements/2"], tmp_path / "frame2.nii.gz")
    )
    assert np.all(template == 0)  # the template frame stays where it is
    assert "pca_after" in json.loads(client.get(job["artifacts"]["metrics"]).text)
    missing = client.get(f"/jobs/{job['job_id']}/artifacts/displacements/7")
    assert missing.status_code == 404


def test_default_model_is_chosen_from_the_image(
    client: httpx.Client, images: dict[str, Path]
) -> None:
    """No model named: the preferred default (cardiac-2d) is not installed, so the catalog
    falls back to the installed model of the image's dimension."""
    response = client.post(
        "/register",
        files=files_of(fixed=images["fixed2"], moving=images["moving2"]),
        data={"steps": "1"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["params"]["model"] is None
    job = wait_for(client, response.json()["job_id"])
    assert job["status"] == "succeeded", job
    assert job["metrics"]["model"]["name"] == "tiny-2d"


def test_no_model_for_the_images_is_refused(
    settings: Settings,
    images: dict[str, Path],
    models_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    only_3d = tmp_path / "models"
    only_3d.mkdir()
    for suffix in (".pt", ".json"):
        shutil.copy(models_dir / f"tiny-3d{suffix}", only_3d)
    monkeypatch.setenv("RIIR_MODELS_DIR", str(only_3d))
    client = TestClient(create_app(settings))
    response = client.post(
        "/register", files=files_of(fixed=images["fixed2"], moving=images["moving2"])
    )
    assert response.status_code == 422
    assert "no model for 2-D images" in response.json()["detail"]


@pytest.mark.parametrize(
    ("job_id", "status"), [("A" * 22, 404), ("nope", 422), ("A" * 23, 422), ("A" * 21 + "~", 422)]
)
def test_an_unknown_job_is_404_and_a_malformed_id_422(
    client: httpx.Client, job_id: str, status: int
) -> None:
    for url in (f"/jobs/{job_id}", f"/jobs/{job_id}/artifacts/warped"):
        response = client.get(url)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == status
    assert client.delete(f"/jobs/{job_id}").status_code == status


def test_unknown_artifact_name_is_refused(client: httpx.Client) -> None:
    response = client.get("/jobs/" + "A" * 22 + "/artifacts/passwd")
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


def test_models_lists_the_shipped_models(client: httpx.Client) -> None:
    names = {card["name"] for card in client.get("/models").json()}
    assert names == {"tiny-2d", "tiny-3d"}


def test_ready_and_metrics(client: httpx.Client, images: dict[str, Path]) -> None:
    job_id = client.post(
        "/register",
        files=files_of(fixed=images["fixed2"], moving=images["moving2"]),
        data={"model": "tiny-2d", "steps": "1"},
    ).json()["job_id"]
    assert wait_for(client, job_id)["status"] == "succeeded"
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["workers"]
    text = client.get("/metrics").text
    assert 'riir_jobs{status="succeeded"}' in text
    assert "riir_queue_length" in text
    assert 'riir_job_run_seconds_count{kind="pair",status="succeeded"}' in text
    assert 'riir_http_requests_total{method="POST",route="/register",status="202"}' in text
