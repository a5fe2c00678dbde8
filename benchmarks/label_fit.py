"""The Dice a field of a given smoothness reaches when it is fitted to the true labels.

No registration sees the labels of the pair it registers; this one does. For each pair that
``riir evaluate`` draws, a voxel displacement on the fixed grid is fitted by Adam to the soft
Dice of the moving label map (one-hot, warped linearly) against the fixed one, plus λ times
the diffusion regulariser, from the identity, at each λ given. The fitted field is then
scored as ``riir evaluate`` scores a method (labels warped by SimpleITK, Dice over the fixed
map's structures, std log|J| and folding of the field over the grid). Where the fit's Dice at
a smoothness target is near a Dice target, no method can meet both on these pairs; where it
is far above, the labels allow it and the images are what a method must learn to read.

    python benchmarks/label_fit.py --data ../shared/data/hippocampus/train --split val \
        --pairs 20 --lam 0.1 --lam 1 --lam 10
    python benchmarks/label_fit.py --data ../shared/data/acdc --data-kind acdc --split val

The pairs are registered where their headers put them (``physical``, the default of every
model but brain-3d); the moving labels are resampled onto the fixed grid first.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from conventions.grid import Grid
from model.networks.losses import diffusion, soft_dice
from model.networks.warp import warp
from model.training import evaluate as ev
from model.training import flags
from model.training.datasets import SubjectPair
from worker.inference.engine import resample_through


def fit(
    fixed: np.ndarray, moving: np.ndarray, labels: list[int], lam: float, steps: int, lr: float
) -> np.ndarray:
    """The voxel displacement (D, *S) that minimises soft Dice + λ diffusion from zero."""

    def onehot(array: np.ndarray) -> torch.Tensor:
        index = np.zeros(array.shape, np.int64)  # background 0 (and any unscored value)
        for k, value in enumerate(labels, start=1):
            index[array == value] = k
        hot = F.one_hot(torch.from_numpy(index), len(labels) + 1)
        return hot.movedim(-1, 0)[None].float()

    target, source = onehot(fixed), onehot(moving)
    phi = torch.zeros(1, fixed.ndim, *fixed.shape, requires_grad=True)
    optimiser = torch.optim.Adam([phi], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad(set_to_none=True)
        loss = soft_dice(warp(source, phi), target) + lam * diffusion(phi)
        loss.backward()
        optimiser.step()
    return phi.detach()[0].numpy()


def fitted_method(lam: float, labels: list[int], steps: int, lr: float) -> ev.Method:
    def register(pair: SubjectPair) -> tuple[sitk.Image, sitk.Image]:
        grid = Grid.of(pair.fixed.image)
        assert pair.fixed.labels is not None and pair.moving.labels is not None
        moving = grid.resample(
            pair.moving.labels, interpolator=sitk.sitkNearestNeighbor, extrapolate=False
        )
        phi = fit(
            sitk.GetArrayFromImage(pair.fixed.labels),
            sitk.GetArrayFromImage(moving),
            labels,
            lam,
            steps,
            lr,
        )
        field = grid.voxel_to_field(phi)
        return field, resample_through(field, pair.moving.labels, sitk.sitkNearestNeighbor)

    return ev.Method(f"label fit, λ {lam:g}", register, {})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    flags.add_pair_options(parser, split="val")
    parser.add_argument(
        "--lam", type=float, action="append", help="λ of the diffusion term (repeatable)"
    )
    parser.add_argument("--steps", type=int, default=300, help="Adam steps per pair")
    parser.add_argument("--lr", type=float, default=0.1, help="Adam's step, in voxels")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source, pairs = flags.chosen_pairs(args)
    labels = [int(v) for v in source.label_values]
    print("| λ | pairs | Dice | std log\\|J\\| | folding % | s / pair |")
    print("|---:|---:|---:|---:|---:|---:|")
    for lam in args.lam or [1.0]:
        method = fitted_method(lam, labels, args.steps, args.lr)
        tick = time.perf_counter()
        rows = [ev.score_pair(method, pair, labels) for pair in pairs]
        summary = ev.summarise(rows)[0]
        print(
            f"| {lam:g} | {len(rows)} | {summary['dice_mean']:.3f} | "
            f"{summary['std_log_jacobian']:.3f} | {summary['folding_percent']:.3f} | "
            f"{(time.perf_counter() - tick) / len(rows):.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
