"""NIfTI headers checked without reading the voxels into an image: the upload-time check.

nibabel only (no SimpleITK, no torch), so the gateway can refuse a bad upload before anything
is queued, and ``conventions.imageio`` makes the same check before SimpleITK reads a file. A
file that claims an absurd size is refused without allocating it, and a file whose header lies
about its size fails as truncated instead of being read past its end.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from conventions.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAX_DATA_OFFSET = 16 << 20  # header + extensions; a NIfTI-1 header is 352 bytes
TRAILING_ALLOWANCE = 1 << 20  # bytes past the voxels tolerated (padding by some writers)


@dataclass(frozen=True)
class Limits:
    """Bounds on what an input may be. Defaults suit a single CPU or GPU worker."""

    max_voxels: int = 512**3  # per 3-D image (a series may hold max_frames of them)
    min_size: int = 4  # voxels along every non-singleton axis
    max_frames: int = 512
    min_spacing_mm: float = 1e-3
    max_spacing_mm: float = 100.0


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class HeaderInfo:
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    dtype: str

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[:3]

    @property
    def spatial_dims(self) -> int:
        """Number of spatial axes with more than one voxel (2 for a single slice)."""
        return sum(n > 1 for n in self.spatial_shape)


def describe(role: str, path: Path) -> str:
    return f"{role} '{path.name}'"


def inspect_header(
    path: str | os.PathLike,
    role: str,
    *,
    series: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    whole_numbers: bool = False,
) -> HeaderInfo:
    """Check a NIfTI header without reading its voxels; raise InputError with the reason.

    ``series=False`` accepts 2-D images (H, W), (H, W, 1) and 3-D volumes; ``series=True``
    accepts a 4-D series (X, Y, Z, N), Z = 1 for a 2-D series.
    """
    path = Path(path)
    who = describe(role, path)
    if not path.is_file():
        raise InputError(f"{who}: file not found")
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise InputError(f"{who}: expected a NIfTI file ending in .nii or .nii.gz")
    if path.stat().st_size == 0:
        raise InputError(f"{who}: file is empty")
    try:
        loaded = nib.load(str(path))
    except (
        OSError,
        EOFError,
        ValueError,
        zlib.error,
        gzip.BadGzipFile,
        nib.filebasedimages.ImageFileError,
        nib.spatialimages.HeaderDataError,
    ) as exc:
        # HeaderDataError: an unknown data type or a garbled dim[0]
        raise InputError(f"{who}: not a readable NIfTI file ({short(exc, path)})") from None
    if not isinstance(loaded, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{who}: not a NIfTI-1/NIfTI-2 image")
    img = loaded
    header = img.header
    shape = tuple(int(n) for n in img.shape)
    zooms = tuple(float(z) for z in header.get_zooms())
    dtype = np.dtype(header.get_data_dtype())
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InputError(
            f"{who}: voxel type {dtype} is not a scalar number type "
            "(RGB, complex and vector images are not supported)"
        )
    # Trailing singleton axes beyond the series axis carry no data.
    while len(shape) > (4 if series else 3) and shape[-1] == 1:
        shape = shape[:-1]
    if series:
        if len(shape) != 4:
            raise InputError(
                f"{who}: a series must be 4-D (X, Y, Z, frames) with Z = 1 for "
                f"2-D frames; got shape {shape}"
            )
        if not 2 <= shape[3] <= limits.max_frames:
            raise InputError(
                f"{who}: a series needs 2 to {limits.max_frames} frames; got {shape[3]}"
            )
    elif len(shape) not in (2, 3):
        raise InputError(
            f"{who}: expected a 2-D (H, W), (H, W, 1) or 3-D image; got shape "
            f"{shape} (use register-series for 4-D series)"
        )
    spatial = shape[:3]
    grown = [n for n in spatial if n > 1]
    if len(grown) < 2:
        raise InputError(
            f"{who}: shape {shape} has fewer than two axes with more than one "
            "voxel; nothing to register"
        )
    if min(grown) < limits.min_size:
        raise InputError(
            f"{who}: shape {shape} is too small; every axis needs at least {limits.min_size} voxels"
        )
    if int(np.prod(spatial, dtype=np.int64)) > limits.max_voxels:
        raise InputError(
            f"{who}: shape {shape} has more than {limits.max_voxels} voxels per "
            "volume; crop or downsample it first"
        )
    spacing = zooms[: len(spatial)]
    for s in spacing:
        if not (np.isfinite(s) and limits.min_spacing_mm <= abs(s) <= limits.max_spacing_mm):
            raise InputError(
                f"{who}: voxel spacing {spacing} mm is outside "
                f"[{limits.min_spacing_mm}, {limits.max_spacing_mm}] mm"
            )
    affine = img.affine
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{who}: the header's affine is not finite and invertible")
    # SimpleITK and the worker follow the affine (qform/sform), not pixdim: check it too.
    sizes = np.linalg.norm(affine[:3, :3], axis=0)[: len(spatial)]
    if not np.all((sizes >= limits.min_spacing_mm) & (sizes <= limits.max_spacing_mm)):
        shown = " x ".join(f"{v:.3g}" for v in sizes)
        raise InputError(
            f"{who}: the affine's voxel size {shown} mm is outside "
            f"[{limits.min_spacing_mm}, {limits.max_spacing_mm}] mm"
        )
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{who}: the header's affine is not finite and invertible")
    slope, inter = header.get_slope_inter()
    if not all(v is None or np.isfinite(v) for v in (slope, inter)):
        raise InputError(f"{who}: the header's intensity scaling is not finite")
    # nibabel zeroes header["vox_offset"] on load; the array proxy keeps the real offset.
    proxy: Any = img.dataobj  # an ArrayProxy; typed as ArrayLike by nibabel
    offset = int(proxy.offset)
    if not 0 <= offset <= MAX_DATA_OFFSET:
        raise InputError(
            f"{who}: the header puts the voxel data at byte {offset}; the file is damaged"
        )
    _check_payload(path, offset, int(np.prod(img.shape, dtype=np.int64)), dtype, who, whole_numbers)
    return HeaderInfo(shape=shape, spacing=spacing, dtype=str(dtype))


def _open_payload(path: Path):  # type: ignore[no-untyped-def]
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _check_payload(
    path: Path,
    offset: int,
    voxels: int,
    dtype: np.dtype,
    who: str,
    whole_numbers: bool = False,
    chunk_voxels: int = 1 << 18,
) -> None:
    """Read the voxels as a stream: fail if there are fewer than the header promises
    (truncated), far more (not what it claims to be), or if any is NaN or infinite (or, for
    labels, not a whole number).

    We check the raw values ourselves because ITK's reader does not report NaN faithfully.
    A .nii.gz is never decompressed past the promised size plus a small allowance, so a gzip
    bomb costs no memory and no more time than an honest file with the same header.
    """
    read = 0
    try:
        with _open_payload(path) as stream:
            if len(stream.read(offset)) < offset:
                raise InputError(f"{who}: the file is truncated (no voxel data)")
            carry = b""
            while read < voxels:
                want = min(chunk_voxels, voxels - read) * dtype.itemsize - len(carry)
                block = carry + stream.read(want)
                if len(block) < dtype.itemsize:
                    break
                usable = len(block) // dtype.itemsize * dtype.itemsize
                values = np.frombuffer(block[:usable], dtype=dtype)
                carry = block[usable:]
                if dtype.kind == "f" and not np.all(np.isfinite(values)):
                    raise InputError(f"{who}: the image holds NaN or infinite values")
                if whole_numbers and dtype.kind == "f" and not np.all(np.mod(values, 1) == 0):
                    raise InputError(f"{who}: labels must be whole numbers")
                read += values.size
            extra = len(stream.read(TRAILING_ALLOWANCE + 1)) if read == voxels else 0
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{who}: the file is truncated or corrupt ({short(exc, path)})") from None
    if read < voxels:
        raise InputError(f"{who}: the file is truncated ({read} of {voxels} voxels)")
    if extra > TRAILING_ALLOWANCE:
        raise InputError(
            f"{who}: the file holds more data than its header declares; it is "
            "damaged or not what it claims to be"
        )


def short(exc: BaseException, path: Path) -> str:
    """The reader's last line, with the file's folder cut out: messages reach remote clients,
    and the server's storage layout is not theirs to see."""
    text = str(exc).strip().splitlines()
    line = text[-1] if text else type(exc).__name__
    return line.replace(str(path.parent) + os.sep, "")[:200]
