"""The job record in Redis: one hash per job, written by the gateway and the worker.

Redis is the source of truth for a job's state (with append-only persistence it survives a
restart of everything). Only small JSON lives here — paths are derived from the job id, and
arrays stay in the storage folder.

State machine (every change is one Lua script, so the gateway cancelling and a worker
reporting progress can never overwrite each other)::

    queued -> running -> succeeded | failed
    queued | running -> cancelled
    running -> running   (a redelivered job after a worker crash; attempts + 1)
    running -> queued    (its worker is gone: requeued by jobs.lease.recover)
    queued -> succeeded | failed   (a run that outlived its lease still records its answer)

Keys: ``riir:job:{id}`` (hash), ``riir:jobs:{status}`` (set of ids, for counting),
``riir:jobs:expiry`` (sorted set id -> time after which cleanup removes the job),
``riir:jobs:created`` (sorted set id -> creation time, for listing recent jobs),
``riir:lease:{id}`` (the running job's holder, see ``jobs.lease``),
``riir:stats:{metric}:{kind}:{status}`` (histogram counters for /metrics).

Torch-free: the worker imports this module too.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Kind = Literal["pair", "series"]
STATUSES: tuple[Status, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE: tuple[Status, ...] = ("queued", "running")
TERMINAL: tuple[Status, ...] = ("succeeded", "failed", "cancelled")

PREFIX = "riir"
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")  # secrets.token_urlsafe(16)
DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_JSON_FIELDS = ("params", "inputs", "metrics", "artifacts")


def new_job_id() -> str:
    """128 random bits: a job id is the only credential to its images when no API key is set."""
    return secrets.token_urlsafe(16)


def is_job_id(text: str) -> bool:
    return bool(JOB_ID.match(text))


@dataclass
class Job:
    id: str
    kind: Kind
    status: Status = "queued"
    params: dict[str, Any] = field(default_factory=dict)  # what the client asked for
    inputs: dict[str, str] = field(default_factory=dict)  # role -> file name in inputs/
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    progress_done: int = 0
    progress_total: int = 0
    attempts: int = 0
    worker: str | None = None
    error: str | None = None
    metrics: dict[str, Any] | None = None
    artifacts: list[str] = field(default_factory=list)  # names served by the gateway
    files_deleted: bool = False

    def to_hash(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in self.__dict__.items():
            if value is None:
                continue
            if key in _JSON_FIELDS:
                out[key] = json.dumps(value, allow_nan=False)
            elif isinstance(value, bool):
                out[key] = "1" if value else "0"
            else:
                out[key] = str(value)
        return out

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> Job:
        def number(key: str) -> float | None:
            return float(data[key]) if data.get(key) else None

        return cls(
            id=data["id"],
            kind=data["kind"],  # type: ignore[arg-type]
            status=data["status"],  # type: ignore[arg-type]
            params=json.loads(data.get("params", "{}")),
            inputs=json.loads(data.get("inputs", "{}")),
            created_at=float(data.get("created_at", 0.0)),
            started_at=number("started_at"),
            finished_at=number("finished_at"),
            progress_done=int(data.get("progress_done", 0)),
            progress_total=int(data.get("progress_total", 0)),
            attempts=int(data.get("attempts", 0)),
            worker=data.get("worker"),
            error=data.get("error"),
            metrics=json.loads(data["metrics"]) if data.get("metrics") else None,
            artifacts=json.loads(data.get("artifacts", "[]")),
            files_deleted=data.get("files_deleted") == "1",
        )


# KEYS: job hash. ARGV: prefix, id, allowed from-states (JSON list), new status,
# expiry score ("" = keep), increment attempts ("1"/"0"), then field/value pairs.
# Returns {1, new} on success, {0, current} when the job is in another state, nil if unknown.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return nil end
local allowed = false
for _, s in ipairs(cjson.decode(ARGV[3])) do
  if s == current then allowed = true end
end
if not allowed then return {0, current} end
local new = ARGV[4]
redis.call('HSET', KEYS[1], 'status', new)
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
redis.call('SMOVE', ARGV[1] .. ':jobs:' .. current, ARGV[1] .. ':jobs:' .. new, ARGV[2])
if ARGV[5] ~= '' then redis.call('ZADD', ARGV[1] .. ':jobs:expiry', ARGV[5], ARGV[2]) end
return {1, new}
"""

# KEYS: job hash. ARGV: done, total, now. Progress is written only while running; the
# current status is returned either way, which is how a worker learns of a cancellation.
_PROGRESS = """
local current = redis.call('HGET', KEYS[1], 'status')
if current == 'running' then
  redis.call('HSET', KEYS[1], 'progress_done', ARGV[1], 'progress_total', ARGV[2],
             'updated_at', ARGV[3])
end
return current
"""


class JobStore:
    def __init__(self, client: redis.Redis, retention_s: float):
        self.redis = client
        self.retention_s = retention_s
        self._transition = client.register_script(_TRANSITION)
        self._progress = client.register_script(_PROGRESS)

    @classmethod
    def from_url(cls, url: str, retention_s: float) -> JobStore:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=30,
            health_check_interval=30,
        )
        return cls(client, retention_s)

    def key(self, job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}"

    # -- the gateway's side -------------------------------------------------------------
    def create(self, job: Job) -> Job:
        job.created_at = job.created_at or time.time()
        record: dict[Any, Any] = job.to_hash()
        with self.redis.pipeline() as pipe:  # MULTI/EXEC: the record and its indexes at once
            pipe.hset(self.key(job.id), mapping=record)
            pipe.sadd(f"{PREFIX}:jobs:{job.status}", job.id)
            pipe.zadd(f"{PREFIX}:jobs:expiry", {job.id: job.created_at + self.retention_s})
            pipe.zadd(f"{PREFIX}:jobs:created", {job.id: job.created_at})
            pipe.execute()
        return job

    def recent(self, limit: int) -> list[Job]:
        """The newest ``limit`` jobs, newest first (a record removed meanwhile is skipped)."""
        ids: list[str] = self.redis.zrevrange(f"{PREFIX}:jobs:created", 0, limit - 1)  # type: ignore[assignment]
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.key(job_id))
            records = pipe.execute()
        return [Job.from_hash(data) for data in records if data]

    def get(self, job_id: str) -> Job | None:
        data = self.redis.hgetall(self.key(job_id))
        return Job.from_hash(data) if data else None  # type: ignore[arg-type]

    def cancel(self, job_id: str) -> bool:
        """queued | running -> cancelled; False when the job had already ended."""
        now = time.time()
        return self._move(
            job_id,
            ACTIVE,
            "cancelled",
            now + self.retention_s,
            finished_at=now,
            error="cancelled by the client",
        )

    def mark_files_deleted(self, job_id: str) -> None:
        if self.redis.exists(self.key(job_id)):
            self.redis.hset(self.key(job_id), mapping={"files_deleted": "1", "artifacts": "[]"})

    def delete(self, job_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(self.key(job_id))
            for status in STATUSES:
                pipe.srem(f"{PREFIX}:jobs:{status}", job_id)
            pipe.zrem(f"{PREFIX}:jobs:expiry", job_id)
            pipe.zrem(f"{PREFIX}:jobs:created", job_id)
            pipe.execute()

    def expired(self, now: float | None = None, limit: int = 500) -> list[str]:
        now = time.time() if now is None else now
        ids = self.redis.zrangebyscore(f"{PREFIX}:jobs:expiry", "-inf", now, start=0, num=limit)
        return list(ids)  # type: ignore[arg-type]

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.key(job_id)))

    def counts(self) -> dict[str, int]:
        with self.redis.pipeline(transaction=False) as pipe:
            for status in STATUSES:
                pipe.scard(f"{PREFIX}:jobs:{status}")
            return dict(zip(STATUSES, pipe.execute(), strict=True))

    # -- the worker's side --------------------------------------------------------------
    def start(self, job_id: str, worker: str) -> bool:
        """queued -> running, or running -> running for a redelivered job (attempts + 1)."""
        return self._move(
            job_id,
            ACTIVE,
            "running",
            None,
            increment_attempts=True,
            started_at=time.time(),
            worker=worker,
            progress_done=0,
        )

    def progress(self, job_id: str, done: int, total: int) -> str | None:
        """Record step ``done`` of ``total``; return the job's status (None: job removed)."""
        status = self._progress(keys=[self.key(job_id)], args=[done, total, time.time()])
        return status  # type: ignore[no-any-return]

    def succeed(self, job_id: str, metrics: dict[str, Any], artifacts: list[str]) -> bool:
        return self._finish(
            job_id,
            "succeeded",
            metrics=json.dumps(metrics, allow_nan=False),
            artifacts=json.dumps(artifacts),
        )

    def fail(self, job_id: str, error: str) -> bool:
        return self._finish(job_id, "failed", error=error)

    def _finish(self, job_id: str, status: Status, **fields: Any) -> bool:
        now = time.time()
        # From queued too: a run that stalled past its lease (so the job was requeued)
        # and then finished still publishes the answer; the requeued message is dropped.
        moved = self._move(
            job_id, ACTIVE, status, now + self.retention_s, finished_at=now, **fields
        )
        if moved:
            job = self.get(job_id)
            if job is not None and job.started_at is not None:
                self._observe("run_seconds", job.kind, status, now - job.started_at)
                self._observe("latency_seconds", job.kind, status, now - job.created_at)
        return moved

    def _move(
        self,
        job_id: str,
        allowed: tuple[str, ...],
        new: Status,
        expiry: float | None,
        increment_attempts: bool = False,
        **fields: Any,
    ) -> bool:
        pairs: list[Any] = []
        for name, value in fields.items():
            pairs += [name, value]
        result = self._transition(
            keys=[self.key(job_id)],
            args=[
                PREFIX,
                job_id,
                json.dumps(list(allowed)),
                new,
                "" if expiry is None else expiry,
                "1" if increment_attempts else "0",
                *pairs,
            ],
        )
        return bool(result) and int(result[0]) == 1  # type: ignore[index]

    # -- statistics for /metrics --------------------------------------------------------
    def _observe(self, metric: str, kind: str, status: str, seconds: float) -> None:
        key = f"{PREFIX}:stats:{metric}:{kind}:{status}"
        with self.redis.pipeline() as pipe:
            for bound in DURATION_BUCKETS:
                if seconds <= bound:
                    pipe.hincrby(key, f"le:{bound}", 1)
            pipe.hincrby(key, "count", 1)
            pipe.hincrbyfloat(key, "sum", seconds)
            pipe.execute()

    def histograms(self, metric: str) -> dict[tuple[str, str], dict[str, float]]:
        """(kind, status) -> {"le:B": cumulative count, "count": n, "sum": s}."""
        out: dict[tuple[str, str], dict[str, float]] = {}
        for key in self.redis.scan_iter(f"{PREFIX}:stats:{metric}:*"):
            _, _, _, kind, status = key.split(":")  # type: ignore[union-attr]
            values: dict[Any, Any] = self.redis.hgetall(key)  # type: ignore[assignment]
            out[(kind, status)] = {str(k): float(v) for k, v in values.items()}
        return out
