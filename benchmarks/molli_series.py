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
``--refine N`` passes ``--refine N`` to ``register-series``.

``--motion-free K`` adds K simulated MOLLI series without motion (``model.training.qmri``,
seeds from ``--seed``, the test split's by default): frames that are already aligned.
D_PCA1 still falls a little for any method that resamples them (linear interpolation smooths
the noise), so on these series it shows how much a method smooths, not the motion it adds;
``riir evaluate --data-kind qmri --data-option motion_mm=0`` measures that against the zero
field.
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
from model.training import qmri


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


def register_series(series: Path, out: Path, args: argparse.Namespace) -> tuple[dict, float]:
    """``riir register-series`` as a user runs it; its metrics.json and the seconds."""
    tick = time.perf_counter()
    refine = ["--refine", str(args.refine)] if args.refine is not None else []
    command = ["register-series", str(series), "--out", str(out), "--model", args.model]
    subprocess.run([sys.executable, "-m", "riir.cli", *command, "--quiet", *refine], check=True)
    seconds = time.perf_counter() - tick
    return json.loads((out / "metrics.json").read_text()), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="molli_kidney.npz")
    parser.add_argument("--out", type=Path, required=True, help="working folder")
    parser.add_argument("--model", default="qmri-2d", help="model name or checkpoint")
    parser.add_argument("--ants", action="store_true", help="add ANTs SyN (needs antspyx)")
    parser.add_argument(
        "--refine", type=int, metavar="N", help="register-series --refine N (test-time steps)"
    )
    parser.add_argument(
        "--motion-free", type=int, default=0, metavar="K", help="simulated still series"
    )
    parser.add_argument("--seed", type=int, default=0, help="first simulated series' seed")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"{args.data}: not found (the MOLLI series is in ../shared/data/molli_kidney)")
    data = np.load(args.data)
    array = np.clip(data["array"].astype(np.float32), 0, None)  # int16 wrap-around in fat
    spacing = tuple(float(s) for s in data["pixel_spacing"])
    args.out.mkdir(parents=True, exist_ok=True)
    # (name, path of the 4-D NIfTI, frames (H, W, N), pixel spacing)
    cases = []
    for s in range(array.shape[2]):
        series = args.out / f"slice{s}.nii.gz"
        write_series(array[:, :, s, :], spacing, series)
        cases.append((f"kidney slice {s}", series, array[:, :, s, :], spacing))
    for k in range(args.motion_free):
        still = qmri.simulate_series("molli", motion_mm=0.0, seed=args.seed + k)
        series = qmri.write_nifti(still, args.out / f"still{k}.nii.gz")
        frames = np.moveaxis(still.frames, 0, -1)  # (H, W, N), for ANTs
        cases.append((f"motion-free {args.seed + k}", series, frames, (still.spacing_mm,) * 2))
    method = args.model + (f" --refine {args.refine}" if args.refine else "")
    rows = []
    for name, series, frames, pixel in cases:
        metrics, seconds = register_series(series, args.out / series.name.split(".")[0], args)
        rows.append((name, method, metrics["pca_before"], metrics["pca_after"], seconds))
        if args.ants:
            after, seconds = ants_pca(frames, pixel)
            rows.append((name, "ants-syn", metrics["pca_before"], after, seconds))
    print("MOLLI series, every frame to the last\n")
    print(
        "| series | method | D_PCA1 before | D_PCA1 after | D_PCA2 before | D_PCA2 after "
        "| seconds |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, method, before, after, seconds in rows:
        print(
            f"| {name} | {method} | {before['d_pca1']:.4f} | {after['d_pca1']:.4f} | "
            f"{before['d_pca2']:.4f} | {after['d_pca2']:.4f} | {seconds:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
