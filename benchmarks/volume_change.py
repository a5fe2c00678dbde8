"""How rough must a field be that matches the anatomy? The std log|J| the labels' volumes imply.

A field that maps each structure of the fixed label map onto the same structure of the moving
one changes its volume by V_moving / V_fixed. The field whose log|J| is that ratio's log,
constant inside each fixed structure and 0 elsewhere, is the smoothest such field in the
between-structure sense: its std log|J| over the fixed grid (how ``riir evaluate`` and the
artifacts measure it, Learn2Reg's SDlogJ) is what matching the volumes alone costs, before any
variation inside a structure. A pair whose estimate is near a smoothness target cannot meet
both that target and a high Dice on its changing structures, whatever the method.

    python benchmarks/volume_change.py FIXED_LABELS MOVING_LABELS [MORE_FIXED MORE_MOVING ...]
    python benchmarks/volume_change.py --data ../shared/data/acdc --data-kind acdc --split val

Label maps on one grid per pair (NIfTI): prints, for each pair and both directions, the
estimate over the whole grid and the structures that contribute most to it. A dataset: the
pairs ``riir evaluate`` draws from it (moving onto fixed, as it registers them), the estimate's
mean over them, as the evaluation's std log|J| column averages the pairs'.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from model.training import flags


def volume_log_ratio(fixed: np.ndarray, moving: np.ndarray) -> tuple[np.ndarray, dict[int, float]]:
    """log(V_moving / V_fixed) of each fixed structure, painted over it (0 in the background
    and where the moving map lacks the structure), and the ratios' logs by label."""
    values, counts = np.unique(fixed[fixed > 0], return_counts=True)
    moving_counts = dict(zip(*np.unique(moving[moving > 0], return_counts=True), strict=True))
    logs = {
        int(v): float(np.log(moving_counts[v] / n))
        for v, n in zip(values, counts, strict=True)
        if v in moving_counts
    }
    painted = np.zeros(fixed.shape)
    for value, log in logs.items():
        painted[fixed == value] = log
    return painted, logs


def report(fixed: np.ndarray, moving: np.ndarray, title: str, top: int) -> None:
    painted, logs = volume_log_ratio(fixed, moving)
    total = painted.size
    mean = painted.mean()
    # Each structure's voxels and share of the grid's variance of log|J| (the shares add up
    # to std²).
    voxels, shares = {}, {}
    for value in logs:
        inside = fixed == value
        voxels[value] = int(inside.sum())
        shares[value] = float(((painted[inside] - mean) ** 2).sum() / total)
    print(f"{title}: std log|J| implied by the volumes {painted.std():.3f}")
    for value in sorted(shares, key=shares.get, reverse=True)[:top]:
        n = voxels[value]
        print(
            f"  label {value:>5}: {n:>8} voxels ({100 * n / total:.2f} % of the grid), "
            f"volume × {np.exp(logs[value]):.2f}, {100 * shares[value] / painted.var():.0f} % "
            "of the variance"
        )


def dataset(args: argparse.Namespace) -> None:
    """The estimate for each pair ``riir evaluate`` draws, and its mean."""
    estimates = []
    for pair in flags.chosen_pairs(args)[1]:
        try:
            fixed, moving = pair.label_arrays()
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        painted, _ = volume_log_ratio(fixed, moving)
        estimates.append(painted.std())
    values = np.array(estimates)
    print(
        f"{args.split}: {len(values)} pairs, std log|J| implied by the volumes: mean "
        f"{values.mean():.3f}, median {np.median(values):.3f}, max {values.max():.3f}; "
        f"{(values > args.limit).sum()} pairs above {args.limit}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("maps", nargs="*", type=Path, help="label maps: fixed moving [...]")
    parser.add_argument("--top", type=int, default=3, help="structures listed per direction")
    flags.add_pair_options(parser, split="val")  # --data: a dataset instead of maps
    parser.add_argument("--limit", type=float, default=0.15, help="a smoothness target to count")
    args = parser.parse_args()
    data = getattr(args, "train.data")
    if bool(data) == bool(args.maps):
        parser.error("give either label maps (FIXED MOVING ...) or --data")
    if data:
        dataset(args)
        return 0
    if len(args.maps) % 2:
        parser.error("give the label maps in pairs: FIXED MOVING")
    for first, second in zip(args.maps[::2], args.maps[1::2], strict=True):
        a, b = (np.asanyarray(nib.load(p).dataobj).astype(np.int32) for p in (first, second))
        if a.shape != b.shape:
            parser.error(f"{first.name} and {second.name} are not on one grid")
        report(a, b, f"{first.name} <- {second.name}", args.top)
        report(b, a, f"{second.name} <- {first.name}", args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
