"""Frames kept as acquired when they did not move (``register-series --keep-still``).

On a series without motion, ``qmri-2d`` still returns fields of about a voxel: it fits the
noise and the contrast (docs/method.md, qMRI). ``worker.inference.still`` keeps a frame as
acquired (a zero field) when its field is that small. This benchmark registers every series
as ``riir register-series --no-keep-still`` does and then applies, frame by frame, each rule
to the sizes that ``metrics.json`` reports (``frame_motion``, in voxels):

- ``none``: every frame registered;
- ``p95 < X``: a frame is kept when 95 % of its field moves less than X voxels
  (``--thresholds``), however far the rest moves;
- ``the rule``: ``still.is_still``, which also asks that no voxel move ``MAX_VOXELS`` or
  more, so motion confined to one organ is registered.

Rows: simulated series (``model.training.qmri``, ``--split`` seeds, MOLLI and mSASHA in
turn) with 8 mm breathing, the end-point error against the true field over the body; the
same without motion, the motion added and D_PCA1 against no registration's; and with
``--kidney``, D_PCA1 of the real kidney MOLLI series. ``--pixels`` and ``--noise-std`` simulate
frames of another pixel size (over the same 192 mm) or noise level than the model trained on.

    python benchmarks/still_frame_gate.py --out runs/gate \
        [--kidney ../shared/data/molli_kidney/molli_kidney.npz] [--model qmri-2d] \
        [--split val] [--series 8] [--thresholds 1.0 1.2] [--interpolation linear]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from molli_series import frames_and_fields, read_kidney, write_series

from conventions.grid import Grid
from conventions.options import INTERPOLATIONS, SeriesOptions
from model.networks import metrics
from model.training import qmri
from model.training.datasets import SimulatedSeriesPairs
from worker.inference import still
from worker.inference.pipeline import register_series_file

Rule = Callable[[dict[str, float]], bool]
FIELD_OF_VIEW_MM = 192.0  # the simulator's default frames: 128 pixels of 1.5 mm


def rules(thresholds: list[float]) -> dict[str, Rule]:
    """Each rule's name and its test of a frame's ``frame_motion``."""
    out: dict[str, Rule] = {"none": lambda size: False}
    for t in thresholds:
        out[f"p95 < {t:g}"] = lambda size, t=t: size["p95_voxels"] < t
    out[f"the rule (p95 < {still.P95_VOXELS:g}, max < {still.MAX_VOXELS:g})"] = still.is_still
    return out


def registered(series: Path, out: Path, args: argparse.Namespace) -> tuple[dict, np.ndarray]:
    """``register-series --no-keep-still``'s metrics.json and warped frames (N, H, W)."""
    options = SeriesOptions(model=args.model, interpolation=args.interpolation, keep_still=False)
    report = register_series_file(series, out, options)
    warped = nib.load(out / "warped.nii.gz").get_fdata()[:, :, 0, :]
    return report, np.moveaxis(warped, -1, 0)


def acquired(series: Path) -> np.ndarray:
    return np.moveaxis(nib.load(series).get_fdata()[:, :, 0, :], -1, 0)


def d_pca1(frames: np.ndarray) -> float:
    return metrics.pca_groupwise(frames)["d_pca1"]


def gated(warped: np.ndarray, raw: np.ndarray, report: dict, rule: Rule) -> np.ndarray:
    """The warped frames with those the rule keeps put back as acquired."""
    out = warped.copy()
    for i, size in enumerate(report["frame_motion"]):
        if rule(size):
            out[i] = raw[i]
    return out


def simulated(args: argparse.Namespace, motion_mm: float, table: dict[str, Rule]) -> dict:
    """Per rule: the mean end-point error (mm, body) over the registered frames, the frames
    kept, and the D_PCA1 change against no registration (mean over series)."""
    errors: dict[str, list[float]] = {name: [] for name in table}
    kept = dict.fromkeys(table, 0)
    pca: dict[str, list[float]] = {name: [] for name in table}
    first = SimulatedSeriesPairs.SEEDS[args.split]  # riir evaluate's series of that split
    frames_n = 0
    for k in range(args.series):
        kind = qmri.KINDS[k % len(qmri.KINDS)]
        series = qmri.simulate_series(
            kind,
            shape=(args.pixels, args.pixels),
            spacing_mm=FIELD_OF_VIEW_MM / args.pixels,
            motion_mm=motion_mm,
            seed=first + k,
            noise_std=args.noise_std,
        )
        path = qmri.write_nifti(series, args.out / f"{kind}-{motion_mm:g}-{k}.nii.gz")
        folder = args.out / path.name.split(".")[0]
        report, warped = registered(path, folder, args)
        raw = acquired(path)
        frames, fields = frames_and_fields(path, folder)
        grid = Grid.of(frames[series.template])
        spacing = grid.spacing[::-1]
        body = series.tissue_map > 0
        # Each registered frame's error with its field and with none, then each rule's pick.
        scored = []
        for i, (field, size) in enumerate(zip(fields, report["frame_motion"], strict=True)):
            if i == series.template % len(frames):
                continue
            phi = grid.field_to_voxel(field, np.float32)
            truth = series.fields[i].astype(np.float64)
            registered_mm = metrics.end_point_error(phi, truth, spacing, body)
            zero_mm = metrics.end_point_error(np.zeros_like(phi), truth, spacing, body)
            scored.append((size, registered_mm, zero_mm))
        unregistered = d_pca1(raw)
        for name, rule in table.items():
            pca[name].append(d_pca1(gated(warped, raw, report, rule)) - unregistered)
            for size, registered_mm, zero_mm in scored:
                kept[name] += rule(size)
                errors[name].append(zero_mm if rule(size) else registered_mm)
        frames_n += len(frames) - 1
    return {
        name: (float(np.mean(errors[name])), kept[name], frames_n, float(np.mean(pca[name])))
        for name in table
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="working folder")
    parser.add_argument("--model", default="qmri-2d", help="model name or checkpoint")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument(
        "--series",
        type=int,
        default=8,
        help="simulated series of each motion (MOLLI, mSASHA in turn)",
    )
    parser.add_argument("--thresholds", type=float, nargs="*", default=[1.0, 1.2], metavar="VOXELS")
    parser.add_argument("--kidney", type=Path, help="molli_kidney.npz: add the real series")
    parser.add_argument("--interpolation", choices=INTERPOLATIONS, default="linear")
    parser.add_argument(
        "--pixels",
        type=int,
        default=128,
        help="simulated frames of N x N pixels over the phantom's 192 mm (default 128: 1.5 mm, "
        "as the model trained on)",
    )
    parser.add_argument(
        "--noise-std", type=float, default=0.02, help="simulated Rician noise (default 0.02)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    table = rules(args.thresholds)

    moving = simulated(args, 8.0, table)
    resting = simulated(args, 0.0, table)
    print(
        f"Simulated series ({args.split}, {args.series} moving 8 mm, {args.series} still; "
        f"{args.pixels} pixels of {FIELD_OF_VIEW_MM / args.pixels:.2f} mm, noise "
        f"{args.noise_std:g}), resampled {args.interpolation}\n"
    )
    print(
        "| frames kept when | moving: end-point error (mm) | kept | still: motion added (mm) "
        "| kept | still: D_PCA1 change |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in table:
        m, r = moving[name], resting[name]
        print(
            f"| {name} | {m[0]:.3f} | {m[1]} / {m[2]} | {r[0]:.3f} | {r[1]} / {r[2]} "
            f"| {r[3]:+.4f} |"
        )
    if args.kidney is None:
        return 0
    array, spacing = read_kidney(args.kidney)
    print(f"\nKidney MOLLI series, resampled {args.interpolation}: D_PCA1\n")
    print("| series | frames' p95 / max (voxels) | no registration | " + " | ".join(table) + " |")
    print("|---|---|---:|" + "---:|" * len(table))
    for s in range(array.shape[2]):
        path = args.out / f"kidney{s}.nii.gz"
        write_series(array[:, :, s, :], spacing, path)
        report, warped = registered(path, args.out / f"kidney{s}", args)
        raw = acquired(path)
        sizes = " ".join(
            f"{m['p95_voxels']:.2f}/{m['max_voxels']:.2f}" for m in report["frame_motion"]
        )
        scores = " | ".join(f"{d_pca1(gated(warped, raw, report, r)):.4f}" for r in table.values())
        print(f"| kidney slice {s} | {sizes} | {d_pca1(raw):.4f} | {scores} |")
    (args.out / "frame_motion.json").write_text(json.dumps({"moving": moving, "still": resting}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
