"""Test-time refinement (model/networks/refine.py) after a model, scored like ``riir evaluate``.

Every pair goes through the inference engine (``worker.inference.engine.register_images``) and is
scored by ``model.training.evaluate.score_pair`` (Dice, HD95, std log|J|, % folding on the fixed
grid), so a row with 0 refinement steps is the model's own ``riir evaluate`` row. The model's
field is computed once per pair and cached; every setting refines that field (or the identity,
``start=identity``). ``s / pair`` is the whole registration: preprocessing, the model (its
cached time, 0 for ``start=identity``), the refinement and the resampling back.

    PYTHONPATH=. python benchmarks/refine_hippocampus.py --data ../shared/data/hippocampus/train \
        --split val --pairs 20 --out runs/refine \
        --setting steps=0 --setting steps=50,lr=0.1,lam=0.05,similarity=mse

A setting is KEY=VALUE,… of ``RefineConfig`` fields plus ``start=network|identity``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import SimpleITK as sitk
import torch
from torch import nn

from conventions import catalog
from model.networks.checkpoint import load_checkpoint
from model.networks.refine import RefineConfig, anatomy, parse_settings, refine
from model.training import evaluate as ev
from model.training.datasets import open_source
from worker.inference.engine import Engine, register_images, resample_through


class Refined(nn.Module):
    """The engine's model: the network's final field (cached per pair), then refinement."""

    def __init__(self, network: nn.Module, cfg: RefineConfig, start: str):
        super().__init__()
        self.network, self.cfg, self.start = network, cfg, start
        self.config = network.config  # what the engine reads (spatial_dims, steps)
        self.cache: dict[tuple[float, float], tuple[torch.Tensor, float]] = {}
        # The network's time of the last call when its field came from the cache (the
        # engine's clock did not see it run): added to the pair's seconds.
        self.cached_seconds = 0.0

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, **kwargs) -> list[torch.Tensor]:
        phi = None
        self.cached_seconds = 0.0
        if self.start == "network":
            key = (float(moving.sum()), float(fixed.sum()))
            if key in self.cache:
                phi, self.cached_seconds = self.cache[key]
            else:
                tick = time.perf_counter()
                phi = self.network(moving, fixed, return_all=False)[-1]
                self.cache[key] = (phi, time.perf_counter() - tick)
        if self.cfg.steps == 0:
            return [
                phi
                if phi is not None
                else fixed.new_zeros(fixed.shape[0], fixed.dim() - 2, *fixed.shape[2:])
            ]
        features = anatomy(self.network, moving, fixed) if self.cfg.feature_weight else None
        return [refine(moving, fixed, phi, self.cfg, features=features)]


def parse_setting(text: str) -> tuple[RefineConfig, str]:
    """A setting: ``RefineConfig`` fields plus ``start=network|identity``."""
    items = [item for item in text.split(",") if item]
    starts = [item.partition("=")[2] for item in items if item.startswith("start=")]
    rest = ",".join(item for item in items if not item.startswith("start="))
    return RefineConfig(**parse_settings(rest)), (starts[-1] if starts else "network")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--model", default="hippocampus-3d")
    p.add_argument("--setting", action="append", default=[])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    source = open_source("folder", args.data)
    pairs = source.pairs(args.split, args.pairs, seed=0)
    path = Path(args.model) if Path(args.model).is_file() else catalog.resolve(args.model, 3, 0)
    network, meta = load_checkpoint(path, torch.device("cpu"))
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    cache: dict = {}
    for text in args.setting or ["steps=0"]:
        cfg, start = parse_setting(text)
        model = Refined(network, cfg, start)
        model.cache = cache  # the network's fields are shared between settings
        engine = Engine(model, meta, Path(path), torch.device("cpu"))

        def register(pair, engine=engine, model=model):
            reg = register_images(engine, pair.fixed.image, pair.moving.image)
            register.cached_seconds = model.cached_seconds
            return reg.field, resample_through(
                reg.field, pair.moving.labels, sitk.sitkNearestNeighbor
            )

        method = ev.Method(text, register, {})
        rows = []
        for pair in pairs:
            row = ev.score_pair(method, pair, source.label_values)
            row["seconds"] += register.cached_seconds
            rows.append(row)
        summary = ev.summarise(rows)[0]
        line = {
            "setting": text,
            "start": start,
            **dataclasses.asdict(cfg),
            **{k: summary[k] for k in ev.VARIANT_COLUMNS},
        }
        with results.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(
            f"{text:60s} Dice {line['dice_mean']:.3f} ± {line['dice_mean_std']:.3f}  "
            f"std log|J| {line['std_log_jacobian']:.3f}  folding "
            f"{line['folding_percent']:.4f} %  {line['seconds']:.2f} s/pair",
            flush=True,
        )


if __name__ == "__main__":
    main()
