"""Runtime settings of the gateway and the worker, from the environment (pydantic-settings).

Read once per process by ``get_settings()`` — never at import time, so tests and ``riir serve``
can set the environment before anything reads it. Every variable is ``RIIR_*`` except
``REDIS_URL``, the name every Redis deployment already uses.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from conventions.header import DEFAULT_LIMITS, Limits

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def default_storage_dir() -> Path:
    """``$XDG_DATA_HOME/riir`` (usually ``~/.local/share/riir``): a per-user data folder."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "riir"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RIIR_", extra="ignore")

    # None: ``riir serve`` starts an embedded Redis; the gateway and worker alone use localhost.
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "RIIR_REDIS_URL")
    )
    storage_dir: Path = Field(default_factory=default_storage_dir)
    queue: str = "riir"

    # Uploads: a request past max_upload_bytes is refused with 413 before it fills the disk.
    max_upload_bytes: int = Field(default=1 << 30, gt=0)
    max_voxels: int = Field(default=DEFAULT_LIMITS.max_voxels, gt=0)  # per 3-D volume
    max_frames: int = Field(default=DEFAULT_LIMITS.max_frames, ge=2)
    # Backpressure: past this many jobs waiting, submissions get 503 + Retry-After.
    max_queued: int = Field(default=1000, ge=1)

    # Jobs: records and files are removed job_retention_s after a job ends (or was created,
    # if it never ran); the gateway sweeps every cleanup_interval_s.
    job_retention_s: float = Field(default=24 * 3600, gt=0)
    cleanup_interval_s: float = Field(default=600, gt=0)
    job_time_limit_s: int = Field(default=3600, gt=0)  # hard limit of one job on a worker
    max_attempts: int = Field(default=3, ge=1)  # deliveries of one job (worker crashes)
    # A running job's lease (jobs.lease): renewed every lease_s / 3; a job whose worker
    # stopped renewing for lease_s is requeued, by a starting worker or the gateway's sweep
    # every recovery_interval_s.
    lease_s: float = Field(default=60, gt=0)
    recovery_interval_s: float = Field(default=30, gt=0)

    device: str = "auto"  # worker: auto | cpu | cuda | cuda:N
    api_key: SecretStr | None = None  # when set, X-API-Key is required on all but /health
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    ready_timeout_s: float = Field(default=1.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # The PACS (DICOMweb: QIDO-RS, WADO-RS, STOW-RS) that series named by UID come from and
    # results go to; unset: DICOM only by upload. The password is never logged.
    pacs_url: str | None = None  # e.g. http://orthanc:8042/dicom-web
    pacs_username: str | None = None
    pacs_password: SecretStr | None = None
    pacs_timeout_s: float = Field(default=30, gt=0)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """``RIIR_CORS_ORIGINS=https://a.example,https://b.example`` (comma-separated)."""
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator(
        "api_key", "redis_url", "pacs_url", "pacs_username", "pacs_password", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def redis(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL

    @property
    def limits(self) -> Limits:
        return Limits(max_voxels=self.max_voxels, max_frames=self.max_frames)

    @property
    def visibility_timeout_s(self) -> int:
        """How long Redis keeps a delivered, unacknowledged job before redelivering it:
        longer than the longest job, or a slow job would run twice."""
        return 2 * self.job_time_limit_s + 300


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
