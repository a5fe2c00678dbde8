"""Series registration to each frame's own low-rank model, against registration to the template.

Progressive principal component registration: every frame is registered to the rank-r PCA
reconstruction of the current warped series (r from ``--ranks``, one pass each), so each
target shares its frame's contrast and only the motion differs. The fields then map a common
space to each frame; composed through the inverse of the template frame's own field, they
map the template frame to each frame, as ``riir register-series`` returns them. Scored
against the usual registration of every frame to the template frame (the last), with the
same model and request:

- the real kidney MOLLI series (both slices): D_PCA1 of the warped frames (lower is better);
- simulated MOLLI series with and without motion (``model.training.qmri``, test seeds): the
  end-point error against the true field in mm (on a still series, the motion added).

    python benchmarks/low_rank_targets.py --data ../shared/data/molli_kidney/molli_kidney.npz \\
        [--model qmri-2d] [--ranks 1 2 3] [--series 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

# This folder's (a script's folder is on its path): the kidney series and register-series'
# results read as the other MOLLI benchmark reads them.
from molli_series import frames_and_fields, frames_of, read_kidney, write_series

from conventions.grid import Grid
from conventions.options import SeriesOptions
from model.networks.metrics import pca_groupwise
from model.training import qmri
from worker.inference.engine import Engine, load_engine, register_images, resample_through
from worker.inference.inverse import invert
from worker.inference.pipeline import register_series_file


def low_rank(stack: np.ndarray, rank: int) -> np.ndarray:
    """The (N, *S) series rebuilt from its first ``rank`` principal components, each frame
    standardised first as D_PCA does, then given back its mean and std."""
    n = stack.shape[0]
    x = stack.reshape(n, -1).astype(np.float64)
    mean, std = x.mean(1, keepdims=True), x.std(1, keepdims=True)
    u, s, vt = np.linalg.svd((x - mean) / std, full_matrices=False)
    z = (u[:, :rank] * s[:rank]) @ vt[:rank]
    return (z * std + mean).reshape(stack.shape).astype(np.float32)


def to_low_rank(
    engine: Engine,
    frames: list[sitk.Image],
    template: int,
    options: SeriesOptions,
    ranks: list[int],
) -> list[sitk.Image]:
    """Every frame registered to its low-rank target, rank by rank; the fields composed onto
    the template frame: x -> y = x + v_t(x) (the common point) -> y + u_i(y)."""
    warped = np.stack([sitk.GetArrayFromImage(f) for f in frames])
    fields: list[sitk.Image] = []
    for rank in ranks:
        targets = low_rank(warped, rank)
        found = [
            register_images(engine, Grid.of(f).image(targets[i]), f, options)
            for i, f in enumerate(frames)
        ]
        fields = [r.field for r in found]
        warped = np.stack([sitk.GetArrayFromImage(r.warped) for r in found])
    back = invert(fields[template], frames[template]).field
    out = []
    for field, frame in zip(fields, frames, strict=True):
        # CompositeTransform applies its last transform first.
        both = sitk.CompositeTransform(
            [sitk.DisplacementFieldTransform(sitk.Image(field)),
             sitk.DisplacementFieldTransform(sitk.Image(back))]
        )  # fmt: skip
        out.append(Grid.of(frame).displacement_of(both))
    return out


def score(
    frames: list[sitk.Image], fields: list[sitk.Image], truth_mm: np.ndarray | None
) -> tuple[float, float | None]:
    """D_PCA1 of the frames warped through the fields, and the mean end-point error (mm)
    against ``truth_mm`` (N, H, W, 2) where known."""
    moved = [resample_through(f, frame) for frame, f in zip(frames, fields, strict=True)]
    d_pca1 = pca_groupwise(np.stack([sitk.GetArrayFromImage(m) for m in moved]))["d_pca1"]
    if truth_mm is None:
        return d_pca1, None
    found = np.stack([sitk.GetArrayFromImage(f) for f in fields])
    return d_pca1, float(np.linalg.norm(found - truth_mm, axis=-1).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="molli_kidney.npz")
    parser.add_argument(
        "--model", default=None, help="model name or checkpoint (default: the series model)"
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3], help="one pass per rank")
    parser.add_argument("--series", type=int, default=2, help="simulated series of each kind")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    array, spacing = read_kidney(args.data)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        table(args, array, spacing, Path(folder))
    return 0


def table(args: argparse.Namespace, array: np.ndarray, spacing: tuple, scratch: Path) -> None:
    """Write the cases' series files into ``scratch``, register them both ways, print."""
    cases = []
    for s in range(array.shape[2]):
        path = scratch / f"slice{s}.nii.gz"
        write_series(array[:, :, s, :], spacing, path)
        cases.append((f"kidney slice {s}", path, None))
    # still: no motion; moving: the simulator's default breathing (up to 8 mm)
    for kind, motion in (("still", {"motion_mm": 0.0}), ("moving", {})):
        for seed in range(args.series):
            series = qmri.simulate_series("molli", seed=seed, **motion)
            path = qmri.write_nifti(series, scratch / f"{kind}{seed}.nii.gz")
            cases.append((f"{kind} MOLLI {seed}", path, series.displacement_mm()))
    engine = load_engine(args.model, 2, int(np.prod(array.shape[:2])), torch.device("cpu"), True)
    options = SeriesOptions(model=args.model)
    print(f"Registration to the template frame and to low-rank targets (ranks {args.ranks})\n")
    print("| series | method | D_PCA1 before | D_PCA1 after | end-point error (mm) | seconds |")
    print("|---|---|---:|---:|---:|---:|")
    for name, path, truth in cases:
        frames = frames_of(path)
        template = len(frames) - 1
        before = pca_groupwise(np.stack([sitk.GetArrayFromImage(f) for f in frames]))["d_pca1"]
        for method in ("template frame", "low-rank targets"):
            tick = time.perf_counter()
            if method == "template frame":  # what register-series does, read back from its files
                out = scratch / f"{path.name.split('.')[0]}-registered"
                register_series_file(path, out, options, device="cpu")
                fields = frames_and_fields(path, out)[1]
            else:
                fields = to_low_rank(engine, frames, template, options, args.ranks)
            seconds = time.perf_counter() - tick
            d_pca1, error = score(frames, fields, truth)
            shown = "" if error is None else f"{error:.3f}"
            print(f"| {name} | {method} | {before:.4f} | {d_pca1:.4f} | {shown} | {seconds:.1f} |")


if __name__ == "__main__":
    raise SystemExit(main())
