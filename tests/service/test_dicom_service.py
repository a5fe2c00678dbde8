"""DICOM through the running service: series uploaded as zips, series named by UID in a real
PACS (Orthanc) with the results stored back, and no patient data in records, logs or errors."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from orthanc import PASSWORD, USER, Orthanc
from support import assert_problem, wait_for, write_nifti

from jobs.settings import Settings
from jobs.store import JobStore

sys.path.insert(0, str(Path(__file__).parents[1]))
from dicom_series import PATIENT, ct_series, zip_files  # noqa: E402
from helpers import blobs  # noqa: E402

SHAPE = (20, 24, 16)
JOB_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def series(service_dir: Path) -> dict[str, Path | list[Path] | str]:
    """A fixed and a moving CT series of one study, as file lists and zips, with labels."""
    root = service_dir / "dicom"
    study = pydicom.uid.generate_uid()
    made: dict[str, Path | list[Path] | str] = {"study": study}
    for role, seed, origin in (("fixed", 2, (-10, -12, 5)), ("moving", 3, (-9, -12, 5))):
        volume = np.round(blobs(SHAPE, seed=seed) * 1000)
        files = ct_series(volume, root / role, study_uid=study, origin=origin, description=role)
        made[role] = files
        made[f"{role}_zip"] = zip_files(files, root / f"{role}.zip")
        made[f"{role}_uid"] = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
        labels = (blobs(SHAPE, seed=seed) > 0.5).astype(np.int16)
        made[f"{role}_labels"] = write_nifti(root / f"{role}_labels.nii.gz", labels, dtype=np.int16)
    return made


def _post(client: httpx.Client, data: dict[str, str], **files: Path) -> httpx.Response:
    parts = {
        name: (path.name, path.read_bytes(), "application/zip") for name, path in files.items()
    }
    return client.post("/register", files=parts or None, data={"model": "tiny-3d", **data})


def _pacs_client(orthanc: Orthanc) -> DICOMwebClient:
    return DICOMwebClient(orthanc.dicomweb, session=create_session_from_user_pass(USER, PASSWORD))


def test_zip_upload_gives_dicom_artifacts(client: httpx.Client, series: dict) -> None:
    response = _post(
        client,
        {},
        fixed=series["fixed_zip"],
        moving=series["moving_zip"],
        fixed_labels=series["fixed_labels"],
        moving_labels=series["moving_labels"],
    )
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["job_id"], timeout=JOB_TIMEOUT_S)
    assert job["status"] == "succeeded", job
    assert {"dicom_registration", "dicom_warped", "dicom_seg", "displacement"} <= set(
        job["artifacts"]
    )
    reg = pydicom.dcmread(io.BytesIO(client.get(job["artifacts"]["dicom_registration"]).content))
    fixed = pydicom.dcmread(series["fixed"][0])
    moving = pydicom.dcmread(series["moving"][0])
    assert reg.FrameOfReferenceUID == fixed.FrameOfReferenceUID
    assert reg.DeformableRegistrationSequence[0].SourceFrameOfReferenceUID == (
        moving.FrameOfReferenceUID
    )
    warped = client.get(job["artifacts"]["dicom_warped"])
    assert warped.headers["content-type"] == "application/zip" and warped.content[:2] == b"PK"


def test_several_series_in_a_zip(client: httpx.Client, series: dict, service_dir: Path) -> None:
    members = series["fixed"] + series["moving"]
    names = [f"{k}.dcm" for k in range(len(members))]
    both = zip_files(members, service_dir / "dicom" / "both.zip", names=names)
    refused = _post(client, {}, fixed=series["fixed_zip"], moving=both)
    assert_problem(
        refused, 422, "2 series", series["fixed_uid"], series["moving_uid"], "moving_series_uid"
    )
    chosen = _post(
        client, {"moving_series_uid": series["moving_uid"]}, fixed=series["fixed_zip"], moving=both
    )
    assert chosen.status_code == 202, chosen.text
    # Run to the end, so no job of this test is still moving files while the next one counts.
    job = wait_for(client, chosen.json()["job_id"], timeout=JOB_TIMEOUT_S)
    assert job["status"] == "succeeded", job
    assert job["params"]["moving_series_uid"] == series["moving_uid"]


@pytest.mark.parametrize("case", ["traversal", "not an image", "missing slice"])
def test_bad_zip_is_refused(
    client: httpx.Client, series: dict, service_dir: Path, nothing_queued: None, case: str
) -> None:
    files, folder = sorted(series["moving"]), service_dir / "dicom" / case.replace(" ", "_")
    folder.mkdir(exist_ok=True)
    if case == "traversal":
        archive = zip_files(files, folder / "bad.zip", names=[f"../{k}" for k in range(len(files))])
        words: tuple[str, ...] = ("leaves the archive",)
    elif case == "not an image":
        (folder / "notes.txt").write_text("a report")
        archive = zip_files([*files, folder / "notes.txt"], folder / "bad.zip")
        words = ("not a DICOM file",)
    else:
        archive = zip_files(files[:3] + files[4:], folder / "bad.zip")
        words = ("not uniformly spaced",)
    assert_problem(_post(client, {}, fixed=series["fixed_zip"], moving=archive), 422, *words)


def test_register_series_takes_a_dicom_zip_of_frames(
    client: httpx.Client, service_dir: Path
) -> None:
    movie = np.round(np.stack([blobs((32, 32), seed=s) * 500 for s in (4, 5, 6)], axis=-1))
    folder = service_dir / "dicom" / "frames"
    archive = zip_files(ct_series(movie, folder, frames=True), folder.with_suffix(".zip"))
    response = client.post(
        "/register-series",
        files={"series": ("frames.zip", archive.read_bytes(), "application/zip")},
        data={"model": "tiny-2d"},
    )
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["job_id"], timeout=JOB_TIMEOUT_S)
    assert job["status"] == "succeeded", job
    assert job["metrics"]["frames"] == 3


def test_register_series_named_in_the_pacs(
    client: httpx.Client, series: dict, orthanc: Orthanc
) -> None:
    """The series are loaded into Orthanc; the service is asked by UID, retrieves them over
    WADO-RS and stores the registration, the warped series and the SEG back over STOW-RS."""
    pacs = _pacs_client(orthanc)
    pacs.store_instances([pydicom.dcmread(p) for p in series["fixed"] + series["moving"]])
    study = series["study"]
    form = {
        "fixed_study_uid": study,
        "fixed_series_uid": series["fixed_uid"],
        "moving_study_uid": study,
        "moving_series_uid": series["moving_uid"],
        "store": "true",
    }
    response = _post(
        client, form, fixed_labels=series["fixed_labels"], moving_labels=series["moving_labels"]
    )
    assert response.status_code == 202, response.text
    job = wait_for(client, response.json()["job_id"], timeout=JOB_TIMEOUT_S)
    assert job["status"] == "succeeded", job
    found = {
        s["0020000E"]["Value"][0]: s["00080060"]["Value"][0] for s in pacs.search_for_series(study)
    }
    new = {
        uid: modality
        for uid, modality in found.items()
        if uid not in (series["fixed_uid"], series["moving_uid"])
    }
    assert sorted(new.values()) == ["CT", "REG", "SEG"], found
    warped_uid = next(uid for uid, modality in new.items() if modality == "CT")
    warped = pacs.retrieve_series(study, warped_uid)
    assert len(warped) == SHAPE[2]
    fixed = pydicom.dcmread(series["fixed"][0])
    assert {ds.FrameOfReferenceUID for ds in warped} == {fixed.FrameOfReferenceUID}


def test_unknown_series_in_the_pacs(
    client: httpx.Client, series: dict, orthanc: Orthanc, nothing_queued: None
) -> None:
    form = {
        "fixed_study_uid": series["study"],
        "fixed_series_uid": "1.2.3.4.5",
        "moving_study_uid": series["study"],
        "moving_series_uid": series["moving_uid"],
    }
    assert_problem(_post(client, form), 422, "holds no series 1.2.3.4.5")


def test_no_patient_data_in_records_logs_or_errors(
    client: httpx.Client,
    series: dict,
    store: JobStore,
    settings: Settings,
    service_dir: Path,
) -> None:
    """Job records keep UIDs only; logs and error messages never name the patient."""
    response = _post(client, {}, fixed=series["fixed_zip"], moving=series["moving_zip"])
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    job = wait_for(client, job_id, timeout=JOB_TIMEOUT_S)
    refused = _post(
        client, {"model": "tiny-2d"}, fixed=series["fixed_zip"], moving=series["fixed_zip"]
    )
    assert refused.status_code == 422
    record = " ".join(f"{k}={v}" for k, v in store.redis.hgetall(f"riir:job:{job_id}").items())
    texts = {
        "job record": record,
        "job view": str(job),
        "metrics": client.get("/metrics").text,
        "error": refused.text,
        "gateway log": (service_dir / "gateway.log").read_text(errors="replace"),
        "worker log": (service_dir / "worker.log").read_text(errors="replace"),
    }
    identity = settings.storage_dir / "jobs" / job_id / "inputs" / "fixed.dicom.json"
    texts["identity"] = identity.read_text()
    for where, text in texts.items():
        for value in (*PATIENT.values(), "Doe"):
            assert value not in text, f"{value!r} in the {where}"
    assert series["fixed_uid"] in texts["identity"]
