"""How well a c2f model's segmentation head segments images it trained on and images it did
not: whether the head over-fits (a gap between the splits) or under-fits (both low).

The head's logits of each fixed image of ``--pairs`` pairs per split (the model's own
preprocessing, ``model.training.datasets.prepare_pair``) become a label map the way
validation reads them (``model.training.train.label_map``) and are scored against the image's
labels (``model.networks.metrics.dice``), as ``val_segmentation_dice`` is during training.
An image is scored once even when it is the fixed image of several pairs.

Two more columns say where the head errs. "whole": the Dice of all labels taken as one
structure against the background, so a swap between two labels (the hippocampus' head and
tail) does not count. "own grid": the head's label map on its own grid, scored against the
labels averaged onto that grid (``benchmarks/label_resolution.py``'s pooling), so what the
grid cannot resolve does not count either.

PYTHONPATH=. python benchmarks/head_dice.py --model hippocampus-3d \
    --data ../data/hippocampus/train --splits train val --pairs 20
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from conventions import catalog
from model.networks.checkpoint import load_checkpoint
from model.networks.metrics import dice
from model.networks.warp import resize
from model.training.datasets import Preprocessing, open_source, prepare_pair
from model.training.train import label_map, one_hot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model name or checkpoint (a c2f with a head)")
    p.add_argument("--data", required=True)
    p.add_argument("--data-kind", default="folder")
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # A name or a path: the dimensions only choose a default model, and one is given.
    model, meta = load_checkpoint(catalog.resolve(args.model, 0, 0))
    if getattr(model, "segmentation", None) is None:
        raise SystemExit(f"{args.model} has no segmentation head")
    pre = Preprocessing.of_meta(meta)
    source = open_source(args.data_kind, args.data)
    values = source.label_values
    print(
        f"| split | images | Dice | {' | '.join(f'label {v}' for v in values)} | whole | own grid |"
    )
    print(f"|---|---:|---:|{'---:|' * (len(values) + 2)}")
    for split in args.splits:
        scores, seen = [], set()
        for subject_pair in source.pairs(split, args.pairs):
            if subject_pair.fixed.name in seen:
                continue
            seen.add(subject_pair.fixed.name)
            pair = prepare_pair(subject_pair, pre)
            if pair.fixed_labels is None:
                continue
            with torch.no_grad():
                _, logits = model.encode(torch.from_numpy(pair.fixed)[None, None].float())
            labels = pair.fixed_labels
            segmented = label_map(logits, pair.fixed.shape, values)
            d = dice(labels, segmented, values)
            whole = dice((labels > 0).astype(np.int32), (segmented > 0).astype(np.int32), [1])
            pooled = resize(one_hot(torch.from_numpy(labels)[None, None], values), logits.shape[2:])
            own = dice(
                pooled.argmax(1)[0].numpy(), logits.argmax(1)[0].numpy(), range(1, 1 + len(values))
            )
            per_label = [d[v] for v in values]
            scores.append(
                [np.nanmean(per_label), *per_label, whole[1], np.nanmean([*own.values()])]
            )
        table = np.nanmean(np.asarray(scores), 0)  # over images: Dice, each label, whole, own
        print(f"| {split} | {len(scores)} | {' | '.join(f'{x:.3f}' for x in table)} |")


if __name__ == "__main__":
    main()
