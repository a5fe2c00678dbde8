"""Motion correction of the real kidney MOLLI series with ``riir register-series``.

Each of the two coronal slices (8 inversion times, free breathing) is written as a 2-D series
NIfTI (256, 256, 1, 8) at the pixel spacing of the data, registered frame by frame to the last
frame (the paper's template) exactly as a user runs the command, and the groupwise PCA metrics
of the warped series are compared with those of the input: D_PCA1 and D_PCA2 fall when the
frames line up (lower is better). Bright fat wraps around in int16; it is clipped to 0.

    python benchmarks/molli_series.py --data ../shared/data/molli_kidney/molli_kidney.npz \
        --out runs/molli [--model qmri-2d] [--ants]

``--ants`` adds ANTs SyN (antspyx defaults, mutual information), frame by frame to the same
template, scored the same way: a classical reference for what these metrics reward.
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

from model.networks.metrics import pca_groupwise


def write_series(frames: np.ndarray, spacing: tuple[float, float], path: Path) -> None:
    """(H, W, N) frames -> a (X, Y, 1, N) NIfTI with the pixel spacing."""
    affine = np.diag([spacing[0], spacing[1], 1.0, 1.0])
    nib.save(nib.Nifti1Image(frames[:, :, None, :].astype(np.float32), affine), path)


def ants_pca(frames: np.ndarray, spacing: tuple[float, float]) -> tuple[dict, float]:
    """D_PCA of the (H, W, N) frames after ANTs SyN of each to the last; and the seconds."""
    import ants

    def image(frame: np.ndarray):
        return ants.from_numpy(frame.astype(np.float32), spacing=spacing)

    tick = time.perf_counter()
    template = image(frames[..., -1])
    after = [
        ants.registration(template, image(frames[..., k]), type_of_transform="SyN")[
            "warpedmovout"
        ].numpy()
        for k in range(frames.shape[-1] - 1)
    ]
    after.append(frames[..., -1])  # the template stays where it is
    return pca_groupwise(np.stack(after)), time.perf_counter() - tick


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="molli_kidney.npz")
    parser.add_argument("--out", type=Path, required=True, help="working folder")
    parser.add_argument("--model", default="qmri-2d", help="model name or checkpoint")
    parser.add_argument("--ants", action="store_true", help="add ANTs SyN (needs antspyx)")
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
        subprocess.run(
            [
                sys.executable,
                "-m",
                "riir.cli",
                "register-series",
                str(series),
                "--out",
                str(result),
                "--model",
                args.model,
                "--quiet",
            ],
            check=True,
        )
        seconds = time.perf_counter() - tick
        metrics = json.loads((result / "metrics.json").read_text())
        rows.append((s, args.model, metrics["pca_before"], metrics["pca_after"], seconds))
        if args.ants:
            after, seconds = ants_pca(array[:, :, s, :], spacing)
            rows.append((s, "ants-syn", metrics["pca_before"], after, seconds))
    print(f"MOLLI kidney series, {array.shape[3]} frames to the last\n")
    print(
        "| slice | method | D_PCA1 before | D_PCA1 after | D_PCA2 before | D_PCA2 after | seconds |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for s, method, before, after, seconds in rows:
        print(
            f"| {s} | {method} | {before['d_pca1']:.4f} | {after['d_pca1']:.4f} | "
            f"{before['d_pca2']:.4f} | {after['d_pca2']:.4f} | {seconds:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
