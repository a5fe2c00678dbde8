"""The Dockerfiles copy and install what the code needs (no Docker engine here: the files are
checked against the code and pyproject.toml)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
FIRST_PARTY = {"conventions", "model", "worker", "jobs", "service", "riir"}


def _copies(dockerfile: str) -> set[str]:
    text = (ROOT / "docker" / dockerfile).read_text()
    return {
        src
        for line in re.findall(r"^COPY (.+)$", text, re.M)
        for src in line.split()[:-1]
        if not src.startswith("--")
    }


def _norm(name: str) -> str:
    return re.split(r"[<>=!~\[ ;(]", name.strip())[0].lower().replace("_", "-")


def _installed_with(names: set[str]) -> set[str]:
    """The distributions and everything they require, recursively (as pip installs them)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [_norm(r) for r in requires(name) or []]
        except PackageNotFoundError:
            continue
    return seen


@pytest.fixture(scope="module")
def gateway_modules(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """First-party modules the gateway process loads."""
    tmp_path = tmp_path_factory.mktemp("gateway")
    code = (
        "import sys, json\nfrom service.main import create_app\n"
        "from jobs.settings import Settings\nimport service.uploads, jobs.lease\n"
        f"create_app(Settings(storage_dir={str(tmp_path)!r})).openapi()\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('conventions', 'jobs', 'service'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def test_gateway_requirements_cover_its_imports(gateway_modules: list[str]) -> None:
    requirements = (ROOT / "docker" / "gateway.requirements.txt").read_text()
    listed = _installed_with(
        {_norm(line) for line in requirements.splitlines() if line.strip() and line[0] != "#"}
    )
    distributions = packages_distributions()
    missing = set()
    for module in gateway_modules:
        path = ROOT / (module.replace(".", "/") + ".py")
        if not path.is_file():
            path = ROOT / module.replace(".", "/") / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if top in FIRST_PARTY or top in sys.stdlib_module_names:
                    continue
                dists = {_norm(d) for d in distributions.get(top, [top])}
                if not dists & listed:
                    missing.add(f"{top} ({module})")
    assert not missing, f"add to docker/gateway.requirements.txt: {sorted(missing)}"


def test_gateway_image_copies_the_code_it_runs(gateway_modules: list[str]) -> None:
    packages = {m.split(".")[0] for m in gateway_modules}
    assert packages <= _copies("gateway.Dockerfile")
    assert "model/weights" in _copies("gateway.Dockerfile")  # GET /models, the model check


def test_worker_image_has_what_pip_install_needs() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    readme = re.search(r'^readme = "(.+)"', pyproject, re.M)
    include = re.search(r"^include = \[(.+)\]", pyproject, re.M)
    assert readme and include
    copies = _copies("worker.Dockerfile")
    assert {"pyproject.toml", readme.group(1)} <= copies
    packages = {p.strip().strip('"').rstrip("*") for p in include.group(1).split(",")}
    assert packages == {"conventions", "model", "worker", "jobs", "service", "riir"}
    assert packages <= copies
    text = (ROOT / "docker" / "worker.Dockerfile").read_text()
    assert "model/weights" in text and "RIIR_MODELS_DIR=/app/weights" in text
