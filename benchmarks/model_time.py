"""Model time (forward only, no_grad) of checkpoints on a 64³ pair: min over repeats.

PYTHONPATH=. python benchmarks/model_time.py runs/c2f-a/best.pt hippocampus-3d --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from conventions import catalog
from model.networks.checkpoint import load_checkpoint


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("models", nargs="+")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    moving, fixed = torch.rand(1, 1, 64, 64, 64), torch.rand(1, 1, 64, 64, 64)
    for spec in args.models:
        path = Path(spec) if Path(spec).is_file() else catalog.resolve(spec, 3, 0)
        model, _ = load_checkpoint(path)
        times = []
        with torch.no_grad():
            for _ in range(args.repeats):
                tick = time.perf_counter()
                model(moving, fixed, return_all=False)
                times.append(time.perf_counter() - tick)
        print(f"{spec}: min {min(times):.3f} s, median {sorted(times)[len(times) // 2]:.3f} s")


if __name__ == "__main__":
    main()
