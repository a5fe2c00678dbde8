"""The gateway never imports torch, SimpleITK, the model or the worker: it starts in a second.

``lint-imports`` checks the same statically (pyproject.toml); this checks what a started
gateway really holds, lazy imports included."""

from __future__ import annotations

import subprocess
import sys


def test_gateway_is_torch_free(tmp_path: object) -> None:
    code = (
        "import sys\n"
        "from service.main import create_app\n"
        "from jobs.settings import Settings\n"
        "import riir.serve, service.uploads\n"
        f"app = create_app(Settings(storage_dir={str(tmp_path)!r}))\n"
        "app.openapi()\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in ('torch', 'SimpleITK', 'model', 'worker'))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_worker_app_imports_no_torch_before_fork() -> None:
    """The worker's parent process holds no torch (nor CUDA) when it forks its pool."""
    code = "import sys\nimport worker.celery_app, worker.tasks\nassert 'torch' not in sys.modules\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
