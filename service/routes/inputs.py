"""``/jobs/{job_id}/inputs/{role}``: a job's uploaded images, read-only, for the web page's
viewer (it shows fixed and moving beside the warped result)."""

from __future__ import annotations

from enum import Enum

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.deps import StorageDep, StoreDep
from service.errors import NotFound, problem_responses
from service.routes.jobs import JobId, _job
from service.uploads import ROLES

router = APIRouter(prefix="/jobs", tags=["jobs"])

InputRole = Enum("InputRole", {role: role for role in ROLES}, type=str)  # type: ignore[misc]


@router.get(
    "/{job_id}/inputs/{role}",
    response_class=FileResponse,
    responses={
        200: {"description": "the uploaded NIfTI file", "content": {"application/gzip": {}}},
        **problem_responses(401, 404, 422, 503),
    },
    summary="Download one uploaded image of a job (fixed, moving, labels or series)",
)
def get_input(job_id: JobId, role: InputRole, store: StoreDep, storage: StorageDep) -> FileResponse:
    """Served in any state until the job's files are deleted. The path comes from the job
    record (names of our own, see service.uploads.name_by_content), never from the request."""
    job = _job(store, job_id)
    name = job.inputs.get(role.value)
    path = None if job.files_deleted or name is None else storage.inputs(job_id) / name
    if name is None or path is None or not path.is_file():
        raise NotFound(f"job {job_id} has no '{role.value}' input (not sent, or deleted)")
    media = "application/gzip" if name.endswith(".gz") else "application/octet-stream"
    return FileResponse(path, media_type=media, filename=name)
