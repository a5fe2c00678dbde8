"""``riir register``, ``riir register-series`` and ``riir models``."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from conventions.options import (
    HELP,
    INITS,
    INTERPOLATIONS,
    MODEL_DEFAULT,
    SIMILARITIES,
    Options,
    RegistrationOptions,
    SeriesOptions,
    check,
)

HELP_MODEL = (
    "a shipped model name (see 'riir models') or the path of a .pt checkpoint; " + MODEL_DEFAULT
)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="output folder (created if missing; existing artifacts are replaced)",
    )
    p.add_argument("--model", metavar="NAME|PATH", help=HELP_MODEL)
    p.add_argument(
        "--device",
        default="auto",
        metavar="auto|cpu|cuda",
        help="where the model runs; auto uses CUDA when present (default: auto)",
    )
    p.add_argument("--steps", type=_positive, metavar="T", help=HELP["steps"])
    p.add_argument("--init", choices=INITS, help=HELP["init"])
    p.add_argument("--similarity", choices=SIMILARITIES, help=HELP["similarity"])
    p.add_argument("--refine", type=int, metavar="N", help=HELP["refine"])
    p.add_argument("--refine-native", type=int, metavar="N", help=HELP["refine_native"])
    p.add_argument("--interpolation", choices=INTERPOLATIONS, help=HELP["interpolation"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "register",
        help="register a moving image to a fixed image",
        description="Register MOVING to FIXED (NIfTI .nii/.nii.gz; 2-D images as (H,W) or "
        "(H,W,1)) and write into DIR: displacement.nii.gz (ITK/ANTs displacement "
        "field on the fixed grid, LPS mm, fixed point -> moving point), "
        "warped.nii.gz, jacobian.nii.gz, metrics.json, preview.png, and with "
        "labels warped_labels.nii.gz plus Dice/HD95 in metrics.json. DICOM inputs also "
        "give registration.dcm (Deformable Spatial Registration), warped_dicom.zip (the "
        "warped series) and with labels warped_labels_seg.dcm (DICOM SEG).",
    )
    p.add_argument(
        "fixed",
        type=Path,
        help="fixed (reference) image: NIfTI, or a DICOM series (folder or .zip)",
    )
    p.add_argument(
        "moving",
        type=Path,
        help="moving image (NIfTI or DICOM folder/.zip), resampled onto the fixed grid",
    )
    for role in ("fixed", "moving"):
        p.add_argument(
            f"--{role}-series-uid",
            metavar="UID",
            help=f"the Series Instance UID to take when the {role} DICOM holds several series",
        )
    p.add_argument(
        "--fixed-labels",
        type=Path,
        metavar="F",
        help="label map on the fixed image's grid (integers, 0 = background)",
    )
    p.add_argument(
        "--moving-labels",
        type=Path,
        metavar="M",
        help="label map on the moving image's grid; warped with nearest neighbour",
    )
    _add_model_options(p)
    p.set_defaults(run=run_register)

    p = subparsers.add_parser(
        "register-series",
        help="register every frame of a 4-D series to one template frame",
        description="Register each frame of SERIES, a 4-D NIfTI (X,Y,Z,N) with Z = 1 for a "
        "2-D series, to its template frame and write into DIR: warped.nii.gz (same "
        "shape), displacements/frame_NNN.nii.gz (one ITK field per frame), "
        "metrics.json with the groupwise D_PCA1/D_PCA2 before and after, preview.png.",
    )
    p.add_argument(
        "series",
        type=Path,
        help="4-D series (X, Y, Z, frames), or a DICOM series of 2-D frames (folder or .zip)",
    )
    p.add_argument("--template", type=int, default=-1, metavar="N", help=HELP["template"])
    p.add_argument("--keep-still", action=argparse.BooleanOptionalAction, help=HELP["keep_still"])
    _add_model_options(p)
    p.set_defaults(run=run_register_series)

    p = subparsers.add_parser(
        "models",
        help="list the shipped models",
        description="List the shipped models with their measured metrics.",
    )
    p.add_argument("--json", action="store_true", help="print the model cards as JSON")
    p.set_defaults(run=run_models)


class _Bar:
    """A tqdm bar fed by the engine's (done, total) progress callback."""

    def __init__(self, description: str, quiet: bool):
        from tqdm import tqdm

        self.bar = tqdm(desc=description, unit="step", disable=quiet, leave=False)

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _options(args: argparse.Namespace, kind: type[Options]) -> Options:
    """The request options from the flags of the same names (checked once, here)."""
    return check(kind, {name: getattr(args, name) for name in kind.model_fields})


def _summary(report: dict[str, Any], out: Path) -> str:
    model = report["model"]
    lines = [
        f"model {model['name']} ({model['version']}) on {report['device']}, "
        f"{report['seconds']['total']:.1f} s"
    ]
    for key, what in (
        ("refine", "test-time refinement"),
        ("refine_native", "refinement on the fixed image's grid"),
    ):
        if report.get(key):
            seconds = report["seconds"].get(key)  # absent for a series: it times the whole
            spent = f", {seconds:.1f} s" if seconds is not None else ""
            lines.append(f"{what}: {report[key]} steps{spent}")
    if "similarity_after" in report:
        before, after = report["similarity_before"], report["similarity_after"]
        lines.append(f"NCC {before['ncc']:.4f} -> {after['ncc']:.4f}")
    if "pca_after" in report:
        b, a = report["pca_before"], report["pca_after"]
        lines.append(
            f"D_PCA1 {b['d_pca1']:.4f} -> {a['d_pca1']:.4f}, "
            f"D_PCA2 {b['d_pca2']:.4f} -> {a['d_pca2']:.4f}"
        )
    if report.get("kept_still"):
        frames = ", ".join(str(i) for i in report["kept_still"])
        lines.append(f"frames kept as acquired (still): {frames}")
    jac = report["jacobian"]
    lines.append(
        f"std log|J| {jac['std_log_jacobian']:.4f}, folding {jac['folding_percent']:.4f} %"
    )
    if "labels" in report:
        before, after = report["labels"]["before"], report["labels"]["after"]
        lines.append(f"Dice {before['dice_mean']:.4f} -> {after['dice_mean']:.4f}")
    lines.append(f"artifacts in {out}")
    return "\n".join(lines)


def _is_dicom(path: Path) -> bool:
    from conventions import dicom

    return path.is_dir() or (path.is_file() and dicom.is_zip(path))


def run_register(args: argparse.Namespace) -> int:
    from conventions import dicom
    from worker.inference.pipeline import register_files

    bar = _Bar("registering", args.quiet)
    with tempfile.TemporaryDirectory(prefix="riir-dicom-") as scratch:
        images, kept = {}, {}
        for role in ("fixed", "moving"):
            source: Path = getattr(args, role)
            if _is_dicom(source):
                names = dicom.prepare_source(
                    source,
                    Path(scratch),
                    role,
                    series_uid=getattr(args, f"{role}_series_uid"),
                    choose_with=f"--{role}-series-uid",
                )
                images[role], kept[role] = (
                    Path(scratch) / names[role],
                    Path(scratch) / names[f"{role}_dicom"],
                )
            else:
                images[role] = source
        try:
            report = register_files(
                images["fixed"],
                images["moving"],
                args.out,
                _options(args, RegistrationOptions),
                device=args.device,
                fixed_labels=args.fixed_labels,
                moving_labels=args.moving_labels,
                progress=bar,
                dicom_series=(kept["fixed"], kept["moving"]) if len(kept) == 2 else None,
            )
        finally:
            bar.close()
    print(_summary(report, args.out))
    return 0


def run_register_series(args: argparse.Namespace) -> int:
    from conventions import dicom
    from worker.inference.pipeline import register_series_file

    bar = _Bar("registering series", args.quiet)
    with tempfile.TemporaryDirectory(prefix="riir-dicom-") as scratch:
        series = args.series
        if _is_dicom(series):  # a DICOM series of 2-D frames, as a folder or a zip
            series = (
                Path(scratch)
                / dicom.prepare_frames(series, Path(scratch), f"series '{series.name}'")["series"]
            )
        try:
            report = register_series_file(
                series, args.out, _options(args, SeriesOptions), device=args.device, progress=bar
            )
        finally:
            bar.close()
    print(_summary(report, args.out))
    return 0


def run_models(args: argparse.Namespace) -> int:
    from conventions import catalog

    cards = catalog.list_models()
    if args.json:
        print(json.dumps(cards, indent=2))
        return 0
    if not cards:
        print(f"no shipped models in {catalog.weights_dir()}")
        return 0
    for card in cards:
        print(
            f"{card['name']:<16} {card.get('spatial_dims', '?')}-D  {card.get('description', '')}"
        )
        for key, value in card.get("metrics", {}).items():
            print(f"{'':<20}{key}: {value}")
    return 0
