"""Seconds of one training step (forward, outer loss, backward) and of inference at 64³,
for the coarse-to-fine RIIR (model/c2f.py) and the shipped RIIR design, on this CPU.

    PYTHONPATH=. python benchmarks/c2f_step_time.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from model.networks.checkpoint import build_model
from model.networks.losses import mse
from model.training.train import Batch, outer_loss, real_mask, step_weights

DESIGNS = {
    "shipped riir (stride 2, T 6, k 1)": (
        "riir",
        {"steps": 6, "cell_stride": 2, "gru_kernel": 1, "gradient_scale": 30},
    ),
    "c2f 1/4,1/2 (3+3), k 3": ("c2f", {"levels": [4, 2], "level_steps": [3, 3]}),
    "c2f 1/4,1/2 (3+3), k 1": ("c2f", {"levels": [4, 2], "level_steps": [3, 3], "gru_kernel": 1}),
    "c2f 1/4,1/2,1 (2+3+1), k 3": ("c2f", {"levels": [4, 2, 1], "level_steps": [2, 3, 1]}),
    "c2f 1/4,1/2 (4+4), k 3, explicit": (
        "c2f",
        {"levels": [4, 2], "level_steps": [4, 4], "explicit_features": True},
    ),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name, (arch, config) in DESIGNS.items():
        if args.only and not any(o in name for o in args.only):
            continue
        model = build_model(arch, {"spatial_dims": 3, **config})
        for cell in getattr(model, "cells", [getattr(model, "cell", None)]):
            torch.nn.init.normal_(cell.conv_out.weight, std=0.01)  # a moving field
        params = sum(p.numel() for p in model.parameters())
        row = {"design": name, "parameters": params}
        for b in args.batch:
            moving, fixed = torch.rand(b, 1, 64, 64, 64), torch.rand(b, 1, 64, 64, 64)
            onehot = torch.rand(b, 3, 64, 64, 64)
            batch = Batch(moving, fixed, onehot, onehot)
            times = []
            for _ in range(args.repeats):
                tick = time.perf_counter()
                phis = model(moving, fixed)
                loss, _ = outer_loss(
                    phis,
                    batch,
                    step_weights(len(phis), "exponential"),
                    mse,
                    1.0,
                    1.0,
                    real_mask(fixed),
                )
                loss.backward()
                times.append(time.perf_counter() - tick)
            row[f"train_step_s_batch{b}"] = round(min(times), 3)
        with torch.no_grad():
            moving, fixed = torch.rand(1, 1, 64, 64, 64), torch.rand(1, 1, 64, 64, 64)
            times = []
            for _ in range(args.repeats):
                tick = time.perf_counter()
                model(moving, fixed, return_all=False)
                times.append(time.perf_counter() - tick)
        row["inference_s"] = round(min(times), 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
