"""Time ``riir register`` on a full 160×192×224 1-mm brain with the shipped ``brain-3d``.

The pair is a real one (``--pair FIXED MOVING``, optionally ``--pair-labels``: for example the
two OASIS brains), or one synthesised from two held-out SynthSeg label maps (``--labels``)
rendered with T1-like contrast on the 2-mm working grid (``SynthBrainPairs``, test split) and
resampled linearly onto the 1-mm box. The command runs exactly as a user runs it (reading, the
initial affine, working-grid resampling, the model, its refinement, the field back on the 1-mm
grid, the inverse, every artifact written); the script prints a table of each run's wall time
and the engine's stages (``metrics.json``'s ``seconds``). "registration" is what the field
itself costs: preprocess (affine and resampling), model, refine (on the working grid and,
where the model runs it, on the scan's own: refine_native) and postprocess. Each run is a
process of its own, as a user's is; ``RIIR_KEEP_FREED_MEMORY=0`` in the environment times it
with glibc's allocator as it ships (``worker.inference.memory``).

    python benchmarks/eval_brain_inference.py --pair fixed.nii.gz moving.nii.gz \
        --out runs/brain-timing
    python benchmarks/eval_brain_inference.py --labels ../shared/data/synthseg_labels \
        --cache runs/cache --out runs/brain-timing
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import SimpleITK as sitk

from conventions.grid import Grid
from model.training.datasets import SynthBrainPairs


def one_mm(image: sitk.Image, interpolator: int) -> sitk.Image:
    """``image`` on a 1-mm grid over the same box (160×192×224 mm for the working grid)."""
    grid = Grid.of(image)
    size = tuple(int(round((n - 1) * s)) + 1 for n, s in zip(grid.size, grid.spacing, strict=True))
    fine = Grid(size, (1.0, 1.0, 1.0), grid.origin, grid.direction)
    return fine.resample(image, interpolator=interpolator, extrapolate=False)


def synthesised(
    folder: Path, cache: Path | None, out: Path
) -> tuple[dict[str, Path], dict[str, Path]]:
    """A held-out synthetic pair on the 1-mm box, written into ``out``: images, label maps."""
    pair = SynthBrainPairs(folder, cache_dir=cache).pairs("test", 1, seed=0)[0]
    paths, labels = {}, {}
    for role, subject in (("fixed", pair.fixed), ("moving", pair.moving)):
        paths[role], labels[role] = out / f"{role}.nii.gz", out / f"{role}_labels.nii.gz"
        sitk.WriteImage(one_mm(subject.image, sitk.sitkLinear), str(paths[role]))
        sitk.WriteImage(one_mm(subject.labels, sitk.sitkNearestNeighbor), str(labels[role]))
    return paths, labels


REGISTRATION = ("preprocess", "model", "refine", "refine_native", "postprocess")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pair", type=Path, nargs=2, metavar=("FIXED", "MOVING"))
    source.add_argument("--labels", type=Path, help="SynthSeg label-map folder to synthesise from")
    parser.add_argument(
        "--pair-labels", type=Path, nargs=2, metavar=("FIXED", "MOVING"), help="label maps"
    )
    parser.add_argument("--cache", type=Path, help="cache folder of the aligned label maps")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="brain-3d")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.pair is not None:
        paths = dict(zip(("fixed", "moving"), args.pair, strict=True))
        labels = (
            dict(zip(("fixed", "moving"), args.pair_labels, strict=True))
            if args.pair_labels
            else {}
        )
    elif args.labels.is_dir():
        paths, labels = synthesised(args.labels, args.cache, args.out)
    else:
        print(
            f"label folder '{args.labels}' not found (see ../shared/data/README.md)",
            file=sys.stderr,
        )
        return 1
    shape = sitk.ReadImage(str(paths["fixed"])).GetSize()
    command = ["riir", "register", str(paths["fixed"]), str(paths["moving"])]
    command += ["--model", args.model, "--out", str(args.out / "result"), "--quiet"]
    if labels:
        command += ["--fixed-labels", str(labels["fixed"])]
        command += ["--moving-labels", str(labels["moving"])]
    rows = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        report = json.loads((args.out / "result" / "metrics.json").read_text())
        rows.append((wall, report["seconds"]))
    stages = list(rows[0][1])
    print(f"input {shape}, model grid {report['model_grid_shape']}, model {args.model}")
    if "labels" in report:
        dice = report["labels"]["before"]["dice_mean"], report["labels"]["after"]["dice_mean"]
        print(f"mean Dice over the labels: {dice[0]:.3f} -> {dice[1]:.3f}")
    print("| run | command (s) | registration (s) | " + " | ".join(stages) + " |")
    print("|---" * (len(stages) + 3) + "|")
    for k, (wall, seconds) in enumerate(rows, 1):
        registration = sum(seconds.get(name, 0.0) for name in REGISTRATION)
        cells = [f"{seconds.get(name, 0.0):.2f}" for name in stages]
        print(f"| {k} | {wall:.2f} | {registration:.2f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
