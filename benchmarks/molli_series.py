"""Motion correction of the real kidney MOLLI series with ``riir register-series``.

Each of the two coronal slices (8 inversion times, free breathing) is written as a 2-D series
NIfTI (256, 256, 1, 8) at the pixel spacing of the data, registered frame by frame to the last
frame (the paper's template) exactly as a user runs the command, and the groupwise PCA metrics
of the warped series are compared with those of the input: D_PCA1 and D_PCA2 fall when the
frames line up (lower is better). Bright fat wraps around in int16; it is clipped to 0.

    python benchmarks/molli_series.py --data ../shared/data/molli_kidney/molli_kidney.npz \
        --out runs/molli [--model qmri-2d] [--ants [SyN] [SyNCC]]

``--ants`` adds ANTs SyN (antspyx defaults, mutual information), frame by frame to the same
template, scored the same way: a classical reference for what these metrics reward.
``--ants SyN SyNCC`` adds a row for each preset, as ``riir evaluate --ants`` does (SyNCC:
rigid, affine, then SyN on local cross-correlation).
``--refine N`` passes ``--refine N`` to ``register-series``.

``--motion-free K`` adds K simulated MOLLI series without motion (``model.training.qmri``,
seeds from ``--seed``, the test split's by default): frames that are already aligned. For
each, a control row resamples the frames through random smooth fields of the same size as
the model's (per frame, the RMS of its displacement): what motion of that size, unrelated to
the images, does to D_PCA1. ``riir evaluate --data-kind qmri --data-option motion_mm=0``
measures the motion a method adds against the zero field.

``--interpolation`` resamples every method's frames with another interpolator: it is passed
to ``register-series`` (its request option of that name) and to ANTs' ``apply_transforms``.
Linear interpolation at a sub-pixel shift averages neighbouring pixels, which smooths noise
and so lowers D_PCA1 by itself; B-spline and windowed-sinc interpolation smooth far less, so
the rows then measure alignment more than smoothing.
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
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

from conventions import imageio
from conventions.grid import INTERPOLATORS, Grid
from conventions.options import INTERPOLATIONS, Interpolation
from model.networks.metrics import pca_groupwise
from model.training import qmri
from model.training.commands import ANTS_TRANSFORMS
from worker.inference.engine import resample_through

# antspyx's name for each of the request's interpolations.
ANTS_INTERPOLATORS = {"linear": "linear", "bspline": "bSpline", "sinc": "lanczosWindowedSinc"}


def read_kidney(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """The kidney series (H, W, slice, frame), its wrapped-around fat clipped, and the pixel
    spacing; exits with a pointer to the data when the file is missing."""
    if not path.is_file():
        sys.exit(f"{path}: not found (the MOLLI series is in ../shared/data/molli_kidney)")
    data = np.load(path)
    array = np.clip(data["array"].astype(np.float32), 0, None)  # int16 wrap-around in fat
    return array, tuple(float(s) for s in data["pixel_spacing"])


def write_series(frames: np.ndarray, spacing: tuple[float, float], path: Path) -> None:
    """(H, W, N) frames -> a (X, Y, 1, N) NIfTI with the pixel spacing."""
    affine = np.diag([spacing[0], spacing[1], 1.0, 1.0])
    nib.save(nib.Nifti1Image(frames[:, :, None, :].astype(np.float32), affine), path)


def ants_pca(
    frames: np.ndarray,
    spacing: tuple[float, float],
    interpolator: Interpolation,
    transform: str = "SyN",
) -> tuple[dict, float]:
    """D_PCA of the (H, W, N) frames after ANTs (the preset ``transform``) of each to the
    last, resampled with ``interpolator``; and the seconds."""
    import ants

    def image(frame: np.ndarray):
        return ants.from_numpy(frame.astype(np.float32), spacing=spacing)

    tick = time.perf_counter()
    template = image(frames[..., -1])
    after = []
    for k in range(frames.shape[-1] - 1):
        moving = image(frames[..., k])
        found = ants.registration(template, moving, type_of_transform=transform)
        after.append(
            ants.apply_transforms(
                template,
                moving,
                found["fwdtransforms"],
                interpolator=ANTS_INTERPOLATORS[interpolator],
            ).numpy()
        )
    after.append(frames[..., -1])  # the template stays where it is
    return pca_groupwise(np.stack(after)), time.perf_counter() - tick


def frames_of(series: Path) -> list[sitk.Image]:
    """A series file's frames as the 2-D images ``register-series`` registers."""
    return [imageio.slice_as_2d(frame) for frame in imageio.read_series(series)]


def frames_and_fields(series: Path, out: Path) -> tuple[list[sitk.Image], list[sitk.Image]]:
    """The series' frames as ``register-series`` registered them, and the in-plane fields it
    wrote for them into ``out`` (``restore_layout``'s 3-component fields, third component 0)."""
    frames = frames_of(series)
    fields = []
    for frame, path in zip(frames, sorted((out / "displacements").glob("frame_*")), strict=True):
        vectors = sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkVectorFloat64))
        fields.append(Grid.of(frame).image(vectors.reshape(*vectors.shape[-3:])[..., :2], True))
    return frames, fields


def resampled_pca(
    frames: list[sitk.Image], fields: list[sitk.Image], interpolator: Interpolation
) -> dict:
    """D_PCA of the frames resampled through their fields with ``interpolator``."""
    how = INTERPOLATORS[interpolator]
    moved = [resample_through(f, frame, how) for frame, f in zip(frames, fields, strict=True)]
    return pca_groupwise(np.stack([sitk.GetArrayFromImage(m) for m in moved]))


def random_fields_like(fields: list[sitk.Image], seed: int) -> list[sitk.Image]:
    """Smooth random fields (Gaussian-filtered noise, sigma 8 pixels), each scaled to the
    RMS displacement of the field it stands in for: motion of that size that owes nothing
    to the images."""
    rng = np.random.default_rng(seed)
    out = []
    for field in fields:
        vectors = sitk.GetArrayFromImage(field)  # (H, W, 2) mm
        rms = np.sqrt((vectors**2).sum(-1).mean())
        noise = np.stack(
            [gaussian_filter(rng.standard_normal(vectors.shape[:-1]), 8) for _ in range(2)], -1
        )
        noise *= rms / max(np.sqrt((noise**2).sum(-1).mean()), 1e-12)
        random = sitk.GetImageFromArray(noise, isVector=True)
        random.CopyInformation(field)
        out.append(random)
    return out


def register_series(series: Path, out: Path, args: argparse.Namespace) -> tuple[dict, float]:
    """``riir register-series`` as a user runs it; its metrics.json and the seconds."""
    tick = time.perf_counter()
    refine = ["--refine", str(args.refine)] if args.refine is not None else []
    command = ["register-series", str(series), "--out", str(out), "--model", args.model]
    command += ["--interpolation", args.interpolation]
    subprocess.run([sys.executable, "-m", "riir.cli", *command, "--quiet", *refine], check=True)
    seconds = time.perf_counter() - tick
    return json.loads((out / "metrics.json").read_text()), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="molli_kidney.npz")
    parser.add_argument("--out", type=Path, required=True, help="working folder")
    parser.add_argument("--model", default="qmri-2d", help="model name or checkpoint")
    parser.add_argument(
        "--ants",
        nargs="*",
        choices=ANTS_TRANSFORMS,
        metavar="PRESET",
        help="add ANTs (needs antspyx), a row per preset: SyN (the one when none is named), SyNCC",
    )
    parser.add_argument(
        "--refine", type=int, metavar="N", help="register-series --refine N (test-time steps)"
    )
    parser.add_argument(
        "--motion-free", type=int, default=0, metavar="K", help="simulated still series"
    )
    parser.add_argument("--seed", type=int, default=0, help="first simulated series' seed")
    parser.add_argument(
        "--interpolation",
        choices=INTERPOLATIONS,
        default="linear",
        help="resample every method's frames with this (default: linear, register-series' "
        "own default)",
    )
    args = parser.parse_args()
    array, spacing = read_kidney(args.data)
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
    presets = [] if args.ants is None else args.ants or ["SyN"]  # --ants alone: SyN
    rows = []
    for name, series, frames, pixel in cases:
        out = args.out / series.name.split(".")[0]
        metrics, seconds = register_series(series, out, args)
        rows.append((name, method, metrics["pca_before"], metrics["pca_after"], seconds))
        if name.startswith("motion-free"):
            images, fields = frames_and_fields(series, out)
            control = resampled_pca(images, random_fields_like(fields, seed=0), args.interpolation)
            rows.append((name, "random fields of its size", metrics["pca_before"], control, 0.0))
        for transform in presets:
            after, seconds = ants_pca(frames, pixel, args.interpolation, transform)
            rows.append((name, f"ants-{transform.lower()}", metrics["pca_before"], after, seconds))
    print(f"MOLLI series, every frame to the last, resampled {args.interpolation}\n")
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
