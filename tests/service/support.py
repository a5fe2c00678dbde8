"""Helpers of the service tests: synthetic NIfTI files, tiny models, polling."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import torch

from jobs.store import TERMINAL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_healthy(url: str) -> bool:
    """True once the gateway at ``url`` answers /health."""
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def write_nifti(
    path: Path,
    array: np.ndarray,
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
    dtype: Any = np.float32,
) -> Path:
    affine = np.diag([*spacing[:3], 1.0])
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=dtype), affine), str(path))
    return path


def make_models(folder: Path) -> Path:
    """A tiny 2-D and 3-D RIIR with non-zero output weights (a zero update would hide bugs)."""
    from model.networks.checkpoint import save_checkpoint
    from model.networks.riir import RIIR, RIIRConfig

    folder.mkdir(parents=True, exist_ok=True)
    for dims in (2, 3):
        torch.manual_seed(dims)
        name = f"tiny-{dims}d"
        m = RIIR(RIIRConfig(spatial_dims=dims, hidden_channels=(8, 8), steps=3))
        torch.nn.init.normal_(m.cell.conv_out.weight, std=0.05)
        save_checkpoint(folder / f"{name}.pt", m, "riir", {"name": name, "version": "test"})
        (folder / f"{name}.json").write_text(
            json.dumps({"name": name, "spatial_dims": dims, "description": "test model"})
        )
    return folder


def files_of(**paths: Path) -> dict[str, tuple[str, bytes, str]]:
    return {
        field: (path.name, path.read_bytes(), "application/octet-stream")
        for field, path in paths.items()
    }


def wait_for(
    client: httpx.Client,
    job_id: str,
    statuses: tuple[str, ...] = TERMINAL,
    timeout: float = 60.0,
    condition: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Poll GET /jobs/{id} until its status is one of ``statuses`` (and ``condition``)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in statuses and (condition is None or condition(job)):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")
        time.sleep(0.1)


def assert_problem(response: httpx.Response, status: int, *words: str) -> None:
    """An RFC 7807 problem response with this status whose detail names ``words``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"]
    for word in words:
        assert word.lower() in body["detail"].lower(), body["detail"]
