"""Request parameters and response bodies of the API."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from conventions.options import PairRequest, SeriesOptions
from jobs.store import Job, Kind, Status

# The form fields of POST /register and /register-series (besides the files) are the
# request options themselves: the gateway refuses exactly what the worker would.
PairParams = PairRequest  # RegistrationOptions and the DICOM request (conventions.options)
SeriesParams = SeriesOptions


class Progress(BaseModel):
    done: int = Field(
        description="steps completed: the network's, the refinement's (on the model's grid, "
        "then on the fixed image's), then one each for "
        "resampling, the inverse field and the artifacts (a series: each frame's steps and "
        "resampling, then its artifacts); equal to total once the results are written"
    )
    total: int = Field(description="steps in all; 0 until the worker has started")


class Timings(BaseModel):
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queued_seconds: float | None = Field(None, description="from submission to start")
    run_seconds: float | None = Field(None, description="from start to the end on the worker")


class JobOut(BaseModel):
    job_id: str
    kind: Kind
    status: Status
    progress: Progress
    params: dict[str, Any]
    timings: Timings
    attempts: int = Field(description="deliveries to a worker (more than 1 after a crash)")
    error: str | None = Field(None, description="why the job failed or was cancelled")
    metrics: dict[str, Any] | None = Field(None, description="metrics.json once succeeded")
    artifacts: dict[str, str] = Field(description="artifact name -> download URL")
    files_deleted: bool = Field(
        False,
        description="DELETE removed the job's files: it keeps its final status, and "
        "has no artifacts any more",
    )
    inputs: dict[str, str] = Field(
        default_factory=dict, description="uploaded file role -> download URL (until deleted)"
    )
    links: dict[str, str]


class JobList(BaseModel):
    jobs: list[JobOut] = Field(description="newest first")


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    spatial_dims: int | None = None
    description: str | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    workers: list[str]


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=timezone.utc)


def _span(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(end - start, 3)


def job_out(job: Job, root: str = "") -> JobOut:
    """The public view of a job record; URLs are root-relative (``root`` is the ASGI
    root_path behind a proxy)."""
    base = f"{root}/jobs/{job.id}"
    # Names are artifact names or, for a series' fields, ``displacements/{frame}``.
    links = {name: f"{base}/artifacts/{name}" for name in job.artifacts}
    created = _time(job.created_at)
    assert created is not None
    return JobOut(
        job_id=job.id,
        kind=job.kind,
        status=job.status,
        progress=Progress(done=job.progress_done, total=job.progress_total),
        params=job.params,
        timings=Timings(
            created_at=created,
            started_at=_time(job.started_at),
            finished_at=_time(job.finished_at),
            queued_seconds=_span(job.created_at, job.started_at),
            run_seconds=_span(job.started_at, job.finished_at),
        ),
        attempts=job.attempts,
        error=job.error,
        metrics=job.metrics,
        artifacts=links,
        inputs={} if job.files_deleted else {role: f"{base}/inputs/{role}" for role in job.inputs},
        files_deleted=job.files_deleted,
        links={"self": base},
    )
