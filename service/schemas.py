"""Request parameters and response bodies of the API."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from riir.options import MAX_STEPS, Init, Similarity
from service.jobstore import Job, Kind, Status


class PairParams(BaseModel):
    """Form fields of ``POST /register`` (besides the files)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None, max_length=100,
        description="a shipped model name from GET /models; default: chosen from the image "
                    "(2-D: cardiac-2d, 3-D up to 96^3 voxels: hippocampus-3d, else brain-3d)")
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS,
                              description="recurrent steps T (default: the model's own)")
    init: Init = Field(
        default="physical", description="initial alignment: 'physical' trusts the headers; "
                                        "'center' first aligns the image centres")
    similarity: Similarity | None = Field(
        default=None, description="inner similarity (default: the model's own)")

    @field_validator("model", "steps", "similarity", mode="before")
    @classmethod
    def _blank_is_default(cls, value: object) -> object:
        """An empty form field (an HTML form's untouched input) means "the default"."""
        return None if isinstance(value, str) and not value.strip() else value


class SeriesParams(PairParams):
    """Form fields of ``POST /register-series``."""

    template: int = Field(default=-1, description="template frame index; negative counts from "
                                                  "the end (default -1: the last frame)")


class Progress(BaseModel):
    done: int = Field(description="steps completed (for a series: over all frames)")
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
    links: dict[str, str]


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
        job_id=job.id, kind=job.kind, status=job.status,
        progress=Progress(done=job.progress_done, total=job.progress_total),
        params=job.params,
        timings=Timings(created_at=created, started_at=_time(job.started_at),
                        finished_at=_time(job.finished_at),
                        queued_seconds=_span(job.created_at, job.started_at),
                        run_seconds=_span(job.started_at, job.finished_at)),
        attempts=job.attempts, error=job.error, metrics=job.metrics, artifacts=links,
        links={"self": base},
    )

