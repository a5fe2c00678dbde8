"""The Dice no registration can pass: structures of the fixed image that the moving one lacks.

``riir evaluate`` scores each pair over the structures present in its fixed label map. Where
the moving map lacks one of them (a basal or apical ACDC slice whose RV shows in one frame
only), every method scores 0 on it, so the mean Dice of any method is at most the mean, over
pairs, of the share of fixed structures the moving map also holds. This prints that ceiling
and the pairs that lower it, for the pairs ``riir evaluate`` draws.

    python benchmarks/label_presence.py --data ../shared/data/acdc --data-kind acdc \
        --split val [--pairs N]
"""

from __future__ import annotations

import argparse

import numpy as np
import SimpleITK as sitk

from model.training.datasets import open_source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the dataset, as riir evaluate takes it")
    parser.add_argument("--data-kind", default="folder", help="as riir evaluate's --data-kind")
    parser.add_argument("--split", default="val", help="val or test (default: val)")
    parser.add_argument("--pairs", type=int, default=None, help="as riir evaluate's --pairs")
    args = parser.parse_args()
    pairs = open_source(args.data_kind, args.data).pairs(args.split, args.pairs)
    shares, missing, total = [], 0, 0
    for pair in pairs:
        if pair.fixed.labels is None or pair.moving.labels is None:
            parser.error(f"pair {pair.name} has no labels")
        fixed = sitk.GetArrayFromImage(pair.fixed.labels)
        moving = set(np.unique(sitk.GetArrayFromImage(pair.moving.labels)).tolist())
        present = [v for v in np.unique(fixed).tolist() if v != 0]
        absent = [v for v in present if v not in moving]
        if absent:
            print(f"{pair.name}: moving lacks label(s) {absent}")
        shares.append(1 - len(absent) / len(present) if present else 1.0)
        missing, total = missing + len(absent), total + len(present)
    print(
        f"{args.split}: {len(pairs)} pairs, {missing} of {total} fixed structures absent from "
        f"the moving map; mean Dice ceiling {np.mean(shares):.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
