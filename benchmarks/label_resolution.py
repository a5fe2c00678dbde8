"""The Dice a label map keeps on a coarser grid: the ceiling of a segmentation head that
lives at 1/s of the working grid.

Each image's labels are one-hot encoded, average-pooled to 1/s of the grid and interpolated
back (``model.training.train.label_map``, the path a c2f head's logits take to the image in
validation), then scored against the original labels (``model.networks.metrics.dice``).
A head at 1/s can do no better than this even when it is perfect on its own grid.

PYTHONPATH=. python benchmarks/label_resolution.py --data ../data/hippocampus/train --strides 1 2 4
PYTHONPATH=. python benchmarks/label_resolution.py --data ../data/acdc --data-kind acdc
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from model.networks.metrics import dice
from model.networks.warp import resize
from model.training.datasets import Preprocessing, open_source, prepare_pair
from model.training.train import label_map, one_hot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--data-kind", default="folder")
    p.add_argument("--split", default="val")
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--strides", type=int, nargs="+", default=[2, 4])
    args = p.parse_args()
    source = open_source(args.data_kind, args.data)
    values = source.label_values
    per_label: dict[int, list[list[float]]] = {s: [] for s in args.strides}
    for subject_pair in source.pairs(args.split, args.pairs):
        labels = prepare_pair(subject_pair, Preprocessing()).fixed_labels
        if labels is None:
            raise SystemExit(f"{subject_pair.name} has no labels")
        onehot = one_hot(torch.from_numpy(labels)[None, None], values)
        for s in args.strides:
            shape = tuple(max(1, -(-n // s)) for n in labels.shape)
            d = dice(label_map(resize(onehot, shape), labels.shape, values), labels, values)
            per_label[s].append([d[v] for v in values])
    print(f"| grid | images | Dice | {' | '.join(f'label {v}' for v in values)} |")
    print(f"|---|---:|---:|{'---:|' * len(values)}")
    for s in args.strides:
        scores = np.asarray(per_label[s])  # (images, labels)
        columns = " | ".join(f"{x:.3f}" for x in np.nanmean(scores, 0))
        print(f"| 1/{s} | {len(scores)} | {np.nanmean(scores, 1).mean():.3f} | {columns} |")


if __name__ == "__main__":
    main()
