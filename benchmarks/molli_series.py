"""Motion correction of the real kidney MOLLI series with ``riir register-series``.

Each of the two coronal slices (8 inversion times, free breathing) is written as a 2-D series
NIfTI (256, 256, 1, 8) at the pixel spacing of the data, registered frame by frame to the last
frame (the paper's template) exactly as a user runs the command, and the groupwise PCA metrics
of the warped series are compared with those of the input: D_PCA1 and D_PCA2 fall when the
frames line up (lower is better). Bright fat wraps around in int16; it is clipped to 0.

    python benchmarks/molli_series.py --data ../shared/data/molli_kidney/molli_kidney.npz \
        --out runs/molli [--model cardiac-2d]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def write_series(frames: np.ndarray, spacing: tuple[float, float], path: Path) -> None:
    """(H, W, N) frames -> a (X, Y, 1, N) NIfTI with the pixel spacing."""
    affine = np.diag([spacing[0], spacing[1], 1.0, 1.0])
    nib.save(nib.Nifti1Image(frames[:, :, None, :].astype(np.float32), affine), path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="molli_kidney.npz")
    parser.add_argument("--out", type=Path, required=True, help="working folder")
    parser.add_argument("--model", default="cardiac-2d", help="model name or checkpoint")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"{args.data}: not found (the MOLLI series is in ../shared/data/molli_kidney)")
    data = np.load(args.data)
    array = np.clip(data["array"].astype(np.float32), 0, None)  # int16 wrap-around in fat
    spacing = tuple(float(s) for s in data["pixel_spacing"])
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(array.shape[2]):
        series = args.out / f"slice{s}.nii.gz"
        write_series(array[:, :, s, :], spacing, series)
        result = args.out / f"slice{s}"
        tick = time.perf_counter()
        subprocess.run([sys.executable, "-m", "riir.cli", "register-series", str(series),
                        "--out", str(result), "--model", args.model, "--quiet"], check=True)
        seconds = time.perf_counter() - tick
        metrics = json.loads((result / "metrics.json").read_text())
        rows.append((s, metrics["pca_before"], metrics["pca_after"], seconds))
    print(f"MOLLI kidney series, {array.shape[3]} frames to the last, model {args.model}\n")
    print("| slice | D_PCA1 before | D_PCA1 after | D_PCA2 before | D_PCA2 after | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for s, before, after, seconds in rows:
        print(f"| {s} | {before['d_pca1']:.4f} | {after['d_pca1']:.4f} | "
              f"{before['d_pca2']:.4f} | {after['d_pca2']:.4f} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
