"""``POST /register`` and ``POST /register-series``: receive, validate, record, queue."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from conventions.options import describe_errors
from jobs import broker
from jobs.pacs import Pacs
from jobs.store import Job, Kind, new_job_id
from service import formdata, uploads
from service.deps import CeleryDep, RootDep, SettingsDep, StorageDep, StoreDep
from service.errors import InvalidParameters, QueueFull, problem_responses
from service.schemas import JobOut, PairParams, SeriesParams, job_out

router = APIRouter(tags=["registration"])
QUEUE_FULL_RETRY_S = 30

FILE_DOCS = {
    "fixed": "fixed (reference) image, NIfTI .nii or .nii.gz (2-D as (H, W) or (H, W, 1)), "
    "or a .zip of one DICOM series; optional when fixed_study_uid and fixed_series_uid "
    "name it in the configured PACS",
    "moving": "moving image (NIfTI or a DICOM series .zip), resampled onto the fixed grid; "
    "optional when named by moving_study_uid and moving_series_uid",
    "fixed_labels": "optional label map on the fixed grid (integers, 0 = background)",
    "moving_labels": "optional label map on the moving grid; warped by nearest neighbour",
    "series": "4-D NIfTI series (X, Y, Z, frames), Z = 1 for 2-D frames; or a .zip of one "
    "DICOM series of 2-D frames of one plane (ordered by Instance Number)",
}


def multipart_body(files: dict[str, bool], params: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a form that the route parses itself (streamed, see service.formdata)."""
    properties: dict[str, Any] = {
        name: {"type": "string", "format": "binary", "description": FILE_DOCS[name]}
        for name in files
    }
    properties.update(params.model_json_schema()["properties"])
    schema = {
        "type": "object",
        "properties": properties,
        "required": [name for name, required in files.items() if required],
    }
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


def _parse(model: type[BaseModel], fields: dict[str, str]) -> Any:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise InvalidParameters(describe_errors(exc)) from None


async def _submit(
    request: Request,
    response: Response,
    kind: Kind,
    params_model: type[BaseModel],
    file_fields: tuple[str, ...],
    validate: Callable[[dict[str, Path], Any], dict[str, str]],
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    celery: CeleryDep,
    root: str,
) -> JobOut:
    # Backpressure before reading a byte: work the queue cannot hold is refused, not stored.
    waiting = (await run_in_threadpool(store.counts))["queued"]
    if waiting >= settings.max_queued:
        raise QueueFull(
            f"{waiting} jobs are waiting for a worker (the limit is "
            f"{settings.max_queued}); retry later",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_S)},
        )
    job_id = new_job_id()
    folder = storage.create(job_id)
    recorded = False
    try:
        form = await formdata.receive(
            request,
            folder,
            file_fields=file_fields,
            text_fields=tuple(params_model.model_fields),
            max_bytes=settings.max_upload_bytes,
        )
        params = _parse(params_model, form.fields)
        # Reading headers and streaming voxels is blocking work: off the event loop.
        inputs = await run_in_threadpool(validate, form.files, params)
        job = Job(id=job_id, kind=kind, params=params.model_dump(), inputs=inputs)
        await run_in_threadpool(store.create, job)
        recorded = True
        await run_in_threadpool(broker.dispatch, celery, job)
    except BaseException:
        # Nothing half-made stays behind: no files, no record, nothing queued.
        storage.remove(job_id)
        if recorded:
            await run_in_threadpool(store.delete, job_id)
        raise
    out = job_out(job, root)
    response.headers["Location"] = out.links["self"]
    return out


SUBMIT_ERRORS = problem_responses(400, 401, 413, 415, 422, 503)
PAIR_ERRORS = problem_responses(400, 401, 413, 415, 422, 502, 503)  # 502: the PACS failed


@router.post(
    "/register",
    status_code=202,
    response_model=JobOut,
    responses=PAIR_ERRORS,
    openapi_extra=multipart_body(
        {"fixed": False, "moving": False, "fixed_labels": False, "moving_labels": False}, PairParams
    ),
    summary="Register a moving image to a fixed image",
)
async def register(
    request: Request,
    response: Response,
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    celery: CeleryDep,
    root: RootDep,
) -> JobOut:
    """Queue a pairwise registration. Poll the job at the ``Location`` header's URL; when it
    has succeeded, download displacement, warped, jacobian, metrics, preview (and labels)."""

    def validate(files: dict[str, Path], params: PairParams) -> dict[str, str]:
        return uploads.validate_pair(
            files,
            settings.limits,
            params.model,
            params,
            lambda: Pacs.from_settings(settings, attempts=1),
        )

    return await _submit(
        request,
        response,
        "pair",
        PairParams,
        uploads.PAIR_FILES,
        validate,
        settings,
        store,
        storage,
        celery,
        root,
    )


@router.post(
    "/register-series",
    status_code=202,
    response_model=JobOut,
    responses=SUBMIT_ERRORS,
    openapi_extra=multipart_body({"series": True}, SeriesParams),
    summary="Register every frame of a 4-D series to one template frame",
)
async def register_series(
    request: Request,
    response: Response,
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
    celery: CeleryDep,
    root: RootDep,
) -> JobOut:
    """Queue a series registration (as ``riir register-series``). Artifacts: warped,
    metrics (D_PCA1/D_PCA2 before and after), preview, and one displacement field per frame
    at ``/jobs/{id}/artifacts/displacements/{frame}``."""

    def validate(files: dict[str, Path], params: SeriesParams) -> dict[str, str]:
        return uploads.validate_series(files, settings.limits, params.model, params.template)

    return await _submit(
        request,
        response,
        "series",
        SeriesParams,
        uploads.SERIES_FILES,
        validate,
        settings,
        store,
        storage,
        celery,
        root,
    )
