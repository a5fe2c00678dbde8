"""The job lease: which worker process runs a job, kept alive by a heartbeat.

Celery with Redis redelivers an unacknowledged job only after the visibility timeout (hours:
it must outlast the longest job), so a worker killed mid-job would leave its job stuck for
that long. The lease makes recovery prompt without ever running a job twice at once:

- A worker takes the lease (``riir:lease:{id}``, value ``host:pid:token``, a TTL of
  ``RIIR_LEASE_S``) before it starts a job and renews it every third of the TTL.
- A second delivery of the same job finds the lease held and leaves the job alone, unless
  the holder is gone: the key expired, or it names a process on this host that no longer
  exists (a restarted worker sees that at once, without waiting for the TTL).
- ``requeue_orphans`` (run when a worker starts, and periodically by the gateway) moves
  running jobs whose holder is gone back to ``queued`` and sends them again; the stale
  message Celery redelivers hours later finds the job ended and is dropped.

Torch-free: the gateway imports this module too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from jobs import broker
from jobs.store import PREFIX, JobStore

log = logging.getLogger(__name__)

# KEYS: lease. ARGV: new holder, ttl ms, holder we may replace ("" = none).
# Returns {1, ""} when taken, {0, current holder} when another holds it.
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] and current ~= ARGV[3] then return {0, current} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, ''}
"""

# KEYS: lease. ARGV: holder, ttl ms (0: release). 1 when we still held it.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# KEYS: job hash, lease. ARGV: prefix, id, holder seen as gone ("" = none), now.
# running -> queued, only if the lease is still what the caller saw (nobody took the job
# meanwhile). Returns 1 when this caller requeued the job (so only one caller sends it).
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local current = redis.call('GET', KEYS[2])
if current and current ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'status', 'queued', 'requeued_at', ARGV[4])
redis.call('SMOVE', ARGV[1] .. ':jobs:running', ARGV[1] .. ':jobs:queued', ARGV[2])
return 1
"""


def lease_key(job_id: str) -> str:
    return f"{PREFIX}:lease:{job_id}"


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    token: str

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"

    @classmethod
    def parse(cls, value: str) -> Holder | None:
        parts = value.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2])

    @classmethod
    def me(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), secrets.token_hex(4))

    def gone(self) -> bool:
        """True when this holder is a process of this host that no longer exists. A holder
        on another host is never judged from here: its lease's TTL decides."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return _zombie(self.pid)


def _zombie(pid: int) -> bool:
    """A killed process not yet reaped (in a container whose init does not reap orphans it
    may stay so): signal 0 still reaches it, but it will never renew a lease."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


class Lease:
    """One worker's hold on one job, renewed by a heartbeat thread while the job runs."""

    def __init__(self, client: redis.Redis, job_id: str, ttl_s: float):
        self.redis, self.key, self.ttl_ms = client, lease_key(job_id), max(1, int(ttl_s * 1000))
        self.holder = Holder.me()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lease; False when a live process holds it."""
        taken, current = self._acquire("")
        if taken:
            return True
        previous = Holder.parse(current)
        if previous is None or not previous.gone():
            return False
        log.info("%s: taking over from %s, which is gone", self.key, current)
        return self._acquire(current)[0]

    def _acquire(self, replace: str) -> tuple[bool, str]:
        result: Any = self.redis.eval(_ACQUIRE, 1, self.key, str(self.holder), self.ttl_ms, replace)
        return int(result[0]) == 1, str(result[1])

    def renew(self) -> bool:
        return bool(self.redis.eval(_RENEW, 1, self.key, str(self.holder), self.ttl_ms))

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.key}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self.renew():
                    log.warning("%s: lease lost; this run will stop", self.key)
                    self.lost.set()
                    return
            except redis.RedisError as exc:  # Redis restarting: keep the job, try again
                log.warning("%s: could not renew the lease (%s)", self.key, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError):  # if Redis is away, the TTL ends it
            self.redis.eval(_RENEW, 1, self.key, str(self.holder), 0)


def holder_of(client: redis.Redis, job_id: str) -> str | None:
    value = client.get(lease_key(job_id))
    return None if value is None else str(value)


def _members(store: JobStore, status: str) -> list[str]:
    return sorted(str(m) for m in store.redis.smembers(f"{PREFIX}:jobs:{status}"))  # type: ignore[union-attr]


def orphans(store: JobStore) -> list[tuple[str, str]]:
    """Running jobs whose lease holder is gone: (job id, the holder seen, "" for none)."""
    found = []
    for job_id in _members(store, "running"):
        current = holder_of(store.redis, job_id)
        holder = Holder.parse(current) if current else None
        if current is None or (holder is not None and holder.gone()):
            found.append((job_id, current or ""))
    return found


def requeue(store: JobStore, job_id: str, seen: str) -> bool:
    """running -> queued if the lease is still ``seen``; True when this caller did it."""
    result = store.redis.eval(
        _REQUEUE, 2, store.key(job_id), lease_key(job_id), PREFIX, job_id, seen, time.time()
    )
    return bool(result)


def queued_without_message(
    store: JobStore, queue: str, grace_s: float, now: float | None = None
) -> list[str]:
    """Queued jobs older than ``grace_s`` that no message in the broker queue carries and no
    lease names: a worker took the message and was killed before it marked the job
    running. (Younger jobs may be between their record and their message.)"""
    now = time.time() if now is None else now
    waiting: set[str] = set()
    for raw in store.redis.lrange(queue, 0, -1):  # type: ignore[union-attr]
        try:
            waiting.add(json.loads(raw)["headers"]["id"])
        except (ValueError, KeyError, TypeError):
            continue
    found = []
    for job_id in _members(store, "queued"):
        if job_id in waiting or holder_of(store.redis, job_id) is not None:
            continue
        fields = store.redis.hmget(store.key(job_id), "created_at", "requeued_at")
        created, requeued = (float(v) if v else 0.0 for v in fields)  # type: ignore[union-attr]
        if now - max(created, requeued) > grace_s:
            found.append(job_id)
    return found


def recover(store: JobStore, celery: Celery, queue: str, grace_s: float) -> list[str]:
    """Send again every job whose worker is gone; return their ids. Safe to run from many
    processes at once: the requeue is a compare-and-set, and a duplicate message is
    dropped by the worker (the job ended, or its lease is held)."""
    sent = []
    for job_id, seen in orphans(store):
        job = store.get(job_id)
        if job is not None and requeue(store, job_id, seen):
            broker.dispatch(celery, job)
            sent.append(job_id)
    for job_id in queued_without_message(store, queue, grace_s):
        job = store.get(job_id)
        if job is not None and job.status == "queued":
            store.redis.hset(store.key(job_id), "requeued_at", time.time())
            broker.dispatch(celery, job)
            sent.append(job_id)
    if sent:
        log.warning("requeued %d job(s) whose worker was lost: %s", len(sent), ", ".join(sent))
    return sent
