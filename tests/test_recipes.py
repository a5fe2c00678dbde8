"""recipes/gpu-hippocampus.sh runs only in the rare session that is lent a GPU, so it would
break unseen: here its ``run`` step goes through on the CPU, on tiny synthetic data staged
where ``prepare`` would put the hippocampus folder."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from helpers import labelled_folder

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "gpu-hippocampus.sh"


def test_the_gpu_recipe_trains_scores_and_packs_its_arms(tmp_path):
    stage = tmp_path / "stage"
    labelled_folder(stage / "hippocampus", (16, 16, 16))
    out, runs = tmp_path / "out", tmp_path / "runs"
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "STAGE": str(stage),
        "RUNS": str(runs),
        "OUT": str(out),
        "PAIRS": "1",
        "BENCHMARK_S": "1",
        "PYTHON": sys.executable,
        "ONLY": "c2f-full grown-0.7.0",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("RIIR_MODELS_DIR", None)  # the service tests' stand-ins: this needs the shipped ones
    done = subprocess.run(
        ["bash", str(RECIPE), "run", "0.0001"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    summary = (out / "summary.md").read_text()
    for arm in ("c2f-full", "grown-0.7.0"):  # trained, stopped by the limit, scored
        assert f"trained hippocampus-3d-{arm} (c2f) for 1 iterations" in summary
        assert f"# {arm}" in summary and "| last | 1 |" in summary
    assert "c2f-e32" not in summary  # ONLY picked the arms
    with tarfile.open(out / "runs.tar.gz") as packed:
        names = set(packed.getnames())
    assert {"./c2f-full/checkpoint.pt", "./grown-0.7.0/eval-val/summary.md"} <= names
    assert (out / "benchmark.md").is_file()


def test_the_gpu_recipe_says_how_to_use_it(tmp_path):
    usage = subprocess.run(["bash", str(RECIPE)], capture_output=True, text=True)
    assert usage.returncode == 2 and "prepare [DATA]" in usage.stdout
    env = {**os.environ, "STAGE": str(tmp_path / "nothing"), "OUT": str(tmp_path / "o")}
    refused = subprocess.run(["bash", str(RECIPE), "run"], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "nothing staged" in refused.stderr
