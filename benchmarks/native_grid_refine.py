"""Refinement on the fixed scan's own grid after a model's whole pipeline, scored like
``riir evaluate``.

``brain-3d`` registers on a 2-mm grid and refines there; a 1-mm scan such as the OASIS brains
is scored at 1 mm. This measures what steps of the same refinement (``model/networks/refine``)
add on the scan's own grid, after the model's field (its affine, network and refinement) is
computed once per pair: the moving scan is resampled onto the fixed grid, the field turned
into voxels of that grid, refined, and scored by ``model.training.evaluate.score_pair``. A
setting with ``steps=0`` is the model's own ``riir evaluate`` row. ``s`` is the added
refinement alone, with the moving scan's resampling onto the fixed grid (as the service's
``seconds.refine_native`` counts it).

    PYTHONPATH=. python benchmarks/native_grid_refine.py --data ../shared/data/brain_real \
        --data-kind brain-real --split val --pairs 2 --threads 2 \
        --setting steps=0 --setting steps=8,lr=0.2

A setting is KEY=VALUE,… of ``RefineConfig`` fields over the defaults below (NCC over a
9-voxel window, a correction on every second voxel, λ 4 and ν 1 with δ 0.25 on the whole
field: ``brain-3d``'s refinement, its window kept at about 1 cm). The service runs the
model's own settings moved to the fixed grid (``refine.on_finer_grid``: the same, with Adam's
step 0.2 and a margin of 8 voxels) as the request option ``refine_native``, which
``riir evaluate --refine-native N`` scores; this script is for trying other settings there.
"""

from __future__ import annotations

import argparse
import time

import SimpleITK as sitk
import torch

from conventions.grid import Grid
from model.networks.refine import RefineConfig, parse_settings
from model.training import evaluate as ev
from model.training.datasets import SubjectPair, open_source
from worker.inference.engine import refine_on_fixed_grid, resample_through

DEFAULTS = dict(
    similarity="ncc",
    ncc_window=9,
    stride=2,
    lam=4.0,
    regularise="field",
    volume_weight=1.0,
    volume_scale=0.25,
)


def refined(pair: SubjectPair, field: sitk.Image, cfg: RefineConfig) -> tuple[sitk.Image, float]:
    """``field`` (on the fixed grid, the initial alignment included) after ``cfg`` on that
    grid, and the seconds that took (the moving scan's resampling onto the grid included)."""
    tick = time.perf_counter()
    phi = refine_on_fixed_grid(pair.fixed.image, pair.moving.image, field, cfg, torch.device("cpu"))
    seconds = time.perf_counter() - tick
    return Grid.of(pair.fixed.image).voxel_to_field(phi), seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--data-kind", default="brain-real")
    p.add_argument("--split", default="val")
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--model", default="brain-3d")
    p.add_argument("--setting", action="append", default=[])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    source = open_source(args.data_kind, args.data)
    pairs = source.pairs(args.split, args.pairs)
    model = ev.model_method(args.model, device="cpu")
    fields = {pair.name: model.register(pair)[0] for pair in pairs}
    print("| setting | pair | Dice | HD95 (mm) | std log\\|J\\| | folding % | s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for text in args.setting or ["steps=0"]:
        cfg = RefineConfig(**{**DEFAULTS, **parse_settings(text)})
        for pair in pairs:
            seconds = {}

            def register(pair: SubjectPair, cfg=cfg, seconds=seconds) -> ev.Registered:
                field, seconds["s"] = refined(pair, fields[pair.name], cfg)
                return field, resample_through(field, pair.moving.labels, sitk.sitkNearestNeighbor)

            row = ev.score_pair(ev.Method(text, register, {}), pair, source.label_values)
            print(
                f"| {text} | {pair.name} | {row['dice_mean']:.3f} | {row['hd95_mean']:.2f} | "
                f"{row['std_log_jacobian']:.3f} | {row['folding_percent']:.4f} | "
                f"{seconds['s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
