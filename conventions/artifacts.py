"""The artifact contract: what a registration writes, under which names, with which types.

The command line and the worker write these files into a job folder; the gateway serves
them by name. Every file is written to a temporary name and renamed, so a reader (or a worker
killed mid-write and restarted) never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

# name -> (file name, media type)
ARTIFACTS: dict[str, tuple[str, str]] = {
    "displacement": ("displacement.nii.gz", "application/gzip"),
    # The same field as an ITK transform file (HDF5) in the fixed image's dimension as ITK
    # reads it: sitk.ReadTransform, antsApplyTransforms and 3D Slicer load it as a grid.
    "transform": ("transform.h5", "application/x-hdf5"),
    # moving point -> fixed point, on the moving image's grid
    "inverse_displacement": ("inverse_displacement.nii.gz", "application/gzip"),
    "warped": ("warped.nii.gz", "application/gzip"),
    "jacobian": ("jacobian.nii.gz", "application/gzip"),
    "labels": ("warped_labels.nii.gz", "application/gzip"),
    "metrics": ("metrics.json", "application/json"),
    "preview": ("preview.png", "image/png"),
    # When the inputs were DICOM series (conventions.dicom_export):
    "dicom_registration": ("registration.dcm", "application/dicom"),  # Deformable Spatial Reg.
    "dicom_warped": ("warped_dicom.zip", "application/zip"),  # the derived series
    "dicom_seg": ("warped_labels_seg.dcm", "application/dicom"),  # the warped labels as SEG
}
SERIES_DISPLACEMENTS = "displacements"  # folder of per-frame fields in a series job


def filename(name: str) -> str:
    return ARTIFACTS[name][0]


def present(folder: Path) -> list[str]:
    """Names of the artifacts that exist in ``folder``, a series' fields as
    ``displacements/{frame}``."""
    names = [name for name, (file, _) in ARTIFACTS.items() if (folder / file).is_file()]
    return names + [f"{SERIES_DISPLACEMENTS}/{frame}" for frame in frames(folder)]


def frame_path(folder: Path, frame: int) -> Path:
    """Where a series job in ``folder`` keeps frame ``frame``'s displacement field."""
    return folder / SERIES_DISPLACEMENTS / f"frame_{frame:03d}.nii.gz"


def frames(folder: Path) -> list[int]:
    """Frame indices of the per-frame displacement fields in a series job's ``folder``."""
    stems = (
        p.name.removeprefix("frame_").removesuffix(".nii.gz")
        for p in (folder / SERIES_DISPLACEMENTS).glob("frame_*.nii.gz")
    )
    return sorted(int(stem) for stem in stems if stem.isdigit())


def _jsonable(value: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers and strict parsers reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item())
    return value


def write_json(data: dict[str, Any], path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, allow_nan=False))
    os.replace(tmp, path)
    return path
