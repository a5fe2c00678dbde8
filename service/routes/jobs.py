"""``/jobs/{job_id}``: status, cancellation, artifact downloads."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from conventions import artifacts
from jobs import broker
from jobs.store import ACTIVE, JOB_ID, Job, JobStore
from service.deps import CeleryDep, RootDep, StorageDep, StoreDep
from service.errors import Conflict, NotFound, problem_responses
from service.schemas import JobOut, job_out

router = APIRouter(prefix="/jobs", tags=["jobs"])

ArtifactName = Enum(  # type: ignore[misc]
    "ArtifactName",
    {name: name for name in artifacts.ARTIFACTS},
    type=str,
)
# A malformed id is refused by its form (422, as the schema says); a well-formed unknown
# one is looked up and not found (404).
JobId = Annotated[
    str,
    PathParam(description="the job id returned by POST /register", pattern=JOB_ID.pattern),
]
NIFTI_GZ = "application/gzip"


def _job(store: JobStore, job_id: str) -> Job:
    job = store.get(job_id)
    if job is None:
        raise NotFound(f"no job '{job_id[:40]}' (unknown, or removed after the retention period)")
    return job


def _downloadable(job: Job) -> None:
    if job.files_deleted:
        raise NotFound(f"job {job.id}'s files were deleted")
    if job.status != "succeeded":
        raise Conflict(
            f"job {job.id} is {job.status}; artifacts can be downloaded once it has succeeded"
        )


def _file(path: Path, media_type: str) -> FileResponse:
    return FileResponse(path, media_type=media_type, filename=path.name)


# 422 is listed because FastAPI would otherwise document its own (non-problem) 422 schema.
@router.get(
    "/{job_id}",
    response_model=JobOut,
    responses=problem_responses(401, 404, 422, 503),
    summary="Status, progress, timings, metrics and artifact links of a job",
)
def get_job(job_id: JobId, store: StoreDep, root: RootDep) -> JobOut:
    return job_out(_job(store, job_id), root)


@router.delete(
    "/{job_id}",
    response_model=JobOut,
    responses=problem_responses(401, 404, 422, 503),
    summary="Cancel a queued or running job and delete its files",
)
def delete_job(
    job_id: JobId, store: StoreDep, storage: StorageDep, celery: CeleryDep, root: RootDep
) -> JobOut:
    """A queued job is dropped; a running job stops at its next step. The record stays (as
    ``cancelled``, or its final state if it had ended, with ``files_deleted``) until the
    retention period ends, so pollers learn what happened; the files are removed now."""
    job = _job(store, job_id)
    if job.status in ACTIVE and store.cancel(job_id):
        broker.revoke(celery, job_id)
    storage.remove(job_id)
    store.mark_files_deleted(job_id)
    return job_out(_job(store, job_id), root)


ARTIFACT_DOCS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the artifact file",
        "content": {NIFTI_GZ: {}, "application/json": {}, "image/png": {}},
    }
}


@router.get(
    "/{job_id}/artifacts/displacements/{frame}",
    response_class=FileResponse,
    responses={**ARTIFACT_DOCS, **problem_responses(401, 404, 409, 422, 503)},
    summary="The displacement field of one frame of a series job",
)
def get_frame_displacement(
    job_id: JobId, frame: int, store: StoreDep, storage: StorageDep
) -> FileResponse:
    job = _job(store, job_id)
    _downloadable(job)
    path = storage.frame_displacement(job_id, frame)
    if path is None:
        raise NotFound(
            f"job {job_id} has no displacement field for frame {frame}"
            + ("" if job.kind == "series" else " (it is not a series job)")
        )
    return _file(path, NIFTI_GZ)


@router.get(
    "/{job_id}/artifacts/{name}",
    response_class=FileResponse,
    responses={**ARTIFACT_DOCS, **problem_responses(401, 404, 409, 422, 503)},
    summary="Download one artifact of a succeeded job",
)
def get_artifact(
    job_id: JobId, name: ArtifactName, store: StoreDep, storage: StorageDep
) -> FileResponse:
    """Names: displacement (ITK/ANTs field on the fixed grid, LPS mm), transform (the same as
    an ITK .h5 transform), inverse_displacement (on the moving grid), warped, jacobian,
    labels (warped labels), metrics (JSON), preview (PNG)."""
    job = _job(store, job_id)
    _downloadable(job)
    path = storage.artifact(job_id, name.value)
    if path is None:
        raise NotFound(
            f"job {job_id} has no '{name.value}' artifact"
            + (" (no labels were uploaded)" if name.value == "labels" else "")
        )
    return _file(path, artifacts.ARTIFACTS[name.value][1])
