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

from model.training import flags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    flags.add_pair_options(parser, split="val")
    args = parser.parse_args()
    _, pairs = flags.chosen_pairs(args)
    shares, missing, total = [], 0, 0
    for pair in pairs:
        try:
            fixed, moving_map = pair.label_arrays()
        except ValueError as exc:
            parser.error(str(exc))
        moving = set(np.unique(moving_map).tolist())
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
