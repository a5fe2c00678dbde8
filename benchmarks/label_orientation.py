"""Whether the anatomy in a data set comes in one orientation: the direction from one label's
centroid to another's, per array axis, over every labelled image of each split.

When every image shows the structure the same way round (all signs agree on an axis), a
flip of that axis (``riir train --flip``) shows the network anatomy it will never meet; the
augmentations that keep orientation (``--affine-rotate``, ``--affine-scale``) do not.
Axes are those of the array a model sees: the image in LPS orientation
(``conventions.grid.oriented``), in numpy order, slowest first.

PYTHONPATH=. python benchmarks/label_orientation.py --data ../data/hippocampus/train --labels 1 2
PYTHONPATH=. python benchmarks/label_orientation.py --data ../data/acdc --data-kind acdc \
    --labels 3 1
"""

from __future__ import annotations

import argparse

import numpy as np
import SimpleITK as sitk

from conventions.grid import oriented
from model.training.datasets import PairSource, open_source


def centroid_step(labels: np.ndarray, start: int, end: int) -> np.ndarray | None:
    """The vector (voxels, per axis) from label ``start``'s centroid to label ``end``'s."""
    a, b = np.argwhere(labels == start), np.argwhere(labels == end)
    if not len(a) or not len(b):
        return None
    return b.mean(0) - a.mean(0)


def orientation_table(
    source: PairSource, split: str, pairs: int, labels: tuple[int, int]
) -> np.ndarray:
    """``centroid_step`` of each labelled image of a split, once each: (images, axes)."""
    steps, seen = [], set()
    for subject_pair in source.pairs(split, pairs):
        for subject in (subject_pair.fixed, subject_pair.moving):
            if subject.name in seen or subject.labels is None:
                continue
            seen.add(subject.name)
            step = centroid_step(sitk.GetArrayFromImage(oriented(subject.labels)), *labels)
            if step is not None:
                steps.append(step)
    return np.asarray(steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--data-kind", default="folder")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    p.add_argument("--labels", type=int, nargs=2, metavar=("FROM", "TO"), required=True)
    p.add_argument("--pairs", type=int, default=10_000, help="pairs drawn per split")
    args = p.parse_args()
    source = open_source(args.data_kind, args.data)
    tables = {
        split: orientation_table(source, split, args.pairs, args.labels) for split in args.splits
    }
    axes = max(t.shape[1] for t in tables.values())
    print(
        "| split | images | "
        + " | ".join(f"axis {a}: + / − (mean voxels)" for a in range(axes))
        + " |"
    )
    print("|---|---:|" + "---|" * axes)
    for split, table in tables.items():
        cells = [
            f"{(table[:, a] > 0).sum()} / {(table[:, a] < 0).sum()} ({table[:, a].mean():+.1f})"
            for a in range(axes)
        ]
        print(f"| {split} | {len(table)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
