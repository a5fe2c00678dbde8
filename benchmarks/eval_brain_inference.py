"""Time ``riir register`` on a full 160×192×224 1-mm brain with the shipped ``brain-3d``.

Real OASIS brains are not available here, so the pair is synthesised: two held-out SynthSeg
label maps rendered with T1-like contrast on the 2-mm working grid (``SynthBrainPairs``, test
split) and resampled linearly onto the 1-mm 160×192×224 box, written as NIfTI. The command then
runs exactly as a user runs it (reading, working-grid resampling, the model, the field back on
the 1-mm grid, every artifact written), and the script prints its wall time and the model's.

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, required=True, help="SynthSeg label-map folder")
    parser.add_argument("--cache", type=Path, help="cache folder of the aligned label maps")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="brain-3d")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not args.labels.is_dir():
        print(
            f"label folder '{args.labels}' not found (see ../shared/data/README.md)",
            file=sys.stderr,
        )
        return 1
    source = SynthBrainPairs(args.labels, cache_dir=args.cache)
    pair = source.pairs("test", 1, seed=0)[0]
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, subject in (("fixed", pair.fixed), ("moving", pair.moving)):
        paths[role] = args.out / f"{role}.nii.gz"
        sitk.WriteImage(one_mm(subject.image, sitk.sitkLinear), str(paths[role]))
        sitk.WriteImage(
            one_mm(subject.labels, sitk.sitkNearestNeighbor),
            str(args.out / f"{role}_labels.nii.gz"),
        )
    shape = sitk.ReadImage(str(paths["fixed"])).GetSize()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run(
            [
                "riir",
                "register",
                str(paths["fixed"]),
                str(paths["moving"]),
                "--model",
                args.model,
                "--out",
                str(args.out / "result"),
                "--quiet",
                "--fixed-labels",
                str(args.out / "fixed_labels.nii.gz"),
                "--moving-labels",
                str(args.out / "moving_labels.nii.gz"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - start)
    report = json.loads((args.out / "result" / "metrics.json").read_text())
    print(
        json.dumps(
            {
                "input_shape": shape,
                "model_grid": report["model_grid_shape"],
                "command_seconds": [round(t, 2) for t in times],
                "engine_seconds": report["seconds"],
                "dice_before": report["labels"]["before"]["dice_mean"],
                "dice_after": report["labels"]["after"]["dice_mean"],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
