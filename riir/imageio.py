"""Reading, validating and writing NIfTI images: the one owner of file-format conventions.

Geometry is always taken from SimpleITK, because the artifact contract is defined by how
SimpleITK (and therefore ITK/ANTs) reads the files: physical points are LPS millimetres,
``origin + direction @ (spacing * index)`` with ``index`` in ITK order (x, y, z). Arrays
obtained with ``sitk.GetArrayFromImage`` are in the reverse (numpy) order (z, y, x).

Headers are inspected with nibabel *before* SimpleITK reads the voxels, so a file that claims
an absurd size is refused without allocating it, and a file whose header lies about its size
fails as truncated instead of being read past its end.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from isal import igzip

from riir.errors import InputError

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


def _describe(role: str, path: Path) -> str:
    return f"{role} '{path.name}'"


def inspect_header(path: str | os.PathLike, role: str, *, series: bool = False,
                   limits: Limits = DEFAULT_LIMITS, whole_numbers: bool = False) -> HeaderInfo:
    """Check a NIfTI header without reading its voxels; raise InputError with the reason.

    ``series=False`` accepts 2-D images (H, W), (H, W, 1) and 3-D volumes; ``series=True``
    accepts a 4-D series (X, Y, Z, N), Z = 1 for a 2-D series.
    """
    path = Path(path)
    who = _describe(role, path)
    if not path.is_file():
        raise InputError(f"{who}: file not found")
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise InputError(f"{who}: expected a NIfTI file ending in .nii or .nii.gz")
    if path.stat().st_size == 0:
        raise InputError(f"{who}: file is empty")
    try:
        loaded = nib.load(str(path))
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile,
            nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError) as exc:
        # HeaderDataError: an unknown data type or a garbled dim[0]
        raise InputError(f"{who}: not a readable NIfTI file ({_short(exc, path)})") from None
    if not isinstance(loaded, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{who}: not a NIfTI-1/NIfTI-2 image")
    img = loaded
    header = img.header
    shape = tuple(int(n) for n in img.shape)
    zooms = tuple(float(z) for z in header.get_zooms())
    dtype = np.dtype(header.get_data_dtype())
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InputError(f"{who}: voxel type {dtype} is not a scalar number type "
                         "(RGB, complex and vector images are not supported)")
    # Trailing singleton axes beyond the series axis carry no data.
    while len(shape) > (4 if series else 3) and shape[-1] == 1:
        shape = shape[:-1]
    if series:
        if len(shape) != 4:
            raise InputError(f"{who}: a series must be 4-D (X, Y, Z, frames) with Z = 1 for "
                             f"2-D frames; got shape {shape}")
        if not 2 <= shape[3] <= limits.max_frames:
            raise InputError(f"{who}: a series needs 2 to {limits.max_frames} frames; "
                             f"got {shape[3]}")
    elif len(shape) not in (2, 3):
        raise InputError(f"{who}: expected a 2-D (H, W), (H, W, 1) or 3-D image; got shape "
                         f"{shape} (use register-series for 4-D series)")
    spatial = shape[:3]
    grown = [n for n in spatial if n > 1]
    if len(grown) < 2:
        raise InputError(f"{who}: shape {shape} has fewer than two axes with more than one "
                         "voxel; nothing to register")
    if min(grown) < limits.min_size:
        raise InputError(f"{who}: shape {shape} is too small; every axis needs at least "
                         f"{limits.min_size} voxels")
    if int(np.prod(spatial, dtype=np.int64)) > limits.max_voxels:
        raise InputError(f"{who}: shape {shape} has more than {limits.max_voxels} voxels per "
                         "volume; crop or downsample it first")
    spacing = zooms[: len(spatial)]
    for s in spacing:
        if not (np.isfinite(s) and limits.min_spacing_mm <= abs(s) <= limits.max_spacing_mm):
            raise InputError(f"{who}: voxel spacing {spacing} mm is outside "
                             f"[{limits.min_spacing_mm}, {limits.max_spacing_mm}] mm")
    affine = img.affine
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{who}: the header's affine is not finite and invertible")
    # SimpleITK and the worker follow the affine (qform/sform), not pixdim: check it too.
    sizes = np.linalg.norm(affine[:3, :3], axis=0)[: len(spatial)]
    if not np.all((sizes >= limits.min_spacing_mm) & (sizes <= limits.max_spacing_mm)):
        shown = " x ".join(f"{v:.3g}" for v in sizes)
        raise InputError(f"{who}: the affine's voxel size {shown} mm is outside "
                         f"[{limits.min_spacing_mm}, {limits.max_spacing_mm}] mm")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{who}: the header's affine is not finite and invertible")
    slope, inter = header.get_slope_inter()
    if not all(v is None or np.isfinite(v) for v in (slope, inter)):
        raise InputError(f"{who}: the header's intensity scaling is not finite")
    # nibabel zeroes header["vox_offset"] on load; the array proxy keeps the real offset.
    proxy: Any = img.dataobj  # an ArrayProxy; typed as ArrayLike by nibabel
    offset = int(proxy.offset)
    if not 0 <= offset <= MAX_DATA_OFFSET:
        raise InputError(f"{who}: the header puts the voxel data at byte {offset}; "
                         "the file is damaged")
    _check_payload(path, offset, int(np.prod(img.shape, dtype=np.int64)), dtype, who,
                   whole_numbers)
    return HeaderInfo(shape=shape, spacing=spacing, dtype=str(dtype))


def _open_payload(path: Path):  # type: ignore[no-untyped-def]
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _check_payload(path: Path, offset: int, voxels: int, dtype: np.dtype, who: str,
                   whole_numbers: bool = False, chunk_voxels: int = 1 << 18) -> None:
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
        raise InputError(f"{who}: the file is truncated or corrupt ({_short(exc, path)})") from None
    if read < voxels:
        raise InputError(f"{who}: the file is truncated ({read} of {voxels} voxels)")
    if extra > TRAILING_ALLOWANCE:
        raise InputError(f"{who}: the file holds more data than its header declares; it is "
                         "damaged or not what it claims to be")


def _short(exc: BaseException, path: Path) -> str:
    """The reader's last line, with the file's folder cut out: messages reach remote clients,
    and the server's storage layout is not theirs to see."""
    text = str(exc).strip().splitlines()
    line = text[-1] if text else type(exc).__name__
    return line.replace(str(path.parent) + os.sep, "")[:200]


def _sitk_read(path: Path, who: str) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{who}: the file is truncated or corrupt "
                         f"({_short(exc, path).removeprefix('sitk::ERROR: ')})") from None


def _check_finite(img: sitk.Image, who: str) -> None:
    values = sitk.GetArrayViewFromImage(img)
    if not np.all(np.isfinite(values)):
        raise InputError(f"{who}: the image holds NaN or infinite values")


def _check_geometry(img: sitk.Image, who: str) -> None:
    direction = np.asarray(img.GetDirection()).reshape(img.GetDimension(), -1)
    if not (np.all(np.isfinite(img.GetOrigin())) and np.all(np.isfinite(direction))):
        raise InputError(f"{who}: the header's origin or direction is not finite")
    if abs(np.linalg.det(direction)) < 1e-6:
        raise InputError(f"{who}: the header's direction matrix is singular")


def _read_scalar(path: str | os.PathLike, role: str, limits: Limits) -> tuple[sitk.Image, str]:
    """Check the header, then read an image of one value per voxel; also the role's name."""
    path = Path(path)
    inspect_header(path, role, limits=limits)
    who = _describe(role, path)
    img = _sitk_read(path, who)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{who}: expected one value per voxel")
    return img, who


def read_image(path: str | os.PathLike, role: str,
               limits: Limits = DEFAULT_LIMITS) -> sitk.Image:
    """Read a 2-D or 3-D image as float32, with its geometry, or raise InputError."""
    img, who = _read_scalar(path, role, limits)
    _check_geometry(img, who)
    img = sitk.Cast(img, sitk.sitkFloat32)
    _check_finite(img, who)
    return img


def read_series(path: str | os.PathLike, role: str = "series",
                limits: Limits = DEFAULT_LIMITS) -> list[sitk.Image]:
    """Read a 4-D series (X, Y, Z, N) as N float32 frames of shape (X, Y, Z)."""
    path = Path(path)
    info = inspect_header(path, role, series=True, limits=limits)
    who = _describe(role, path)
    img = _sitk_read(path, who)
    if img.GetDimension() != 4 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{who}: expected a scalar 4-D series; read a "
                         f"{img.GetDimension()}-D image")
    size = list(img.GetSize())
    frames = []
    for n in range(info.shape[3]):
        # Cast per frame: SimpleITK's Cast does not handle 4-D images.
        frame = sitk.Cast(sitk.Extract(img, size[:3] + [0], [0, 0, 0, n],
                                       sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX),
                          sitk.sitkFloat32)
        _check_geometry(frame, who)
        _check_finite(frame, f"{who} frame {n}")
        frames.append(frame)
    return frames


def read_labels(path: str | os.PathLike, role: str, like: sitk.Image,
                limits: Limits = DEFAULT_LIMITS) -> sitk.Image:
    """Read an integer label map that lies on the same voxel grid as ``like``."""
    img, who = _read_scalar(path, role, limits)
    values = sitk.GetArrayViewFromImage(img)
    if not np.all(np.isfinite(values)) or not np.all(np.equal(np.mod(values, 1), 0)):
        raise InputError(f"{who}: labels must be whole numbers")
    if img.GetSize() != like.GetSize():
        raise InputError(f"{who}: label grid {img.GetSize()} differs from its image's grid "
                         f"{like.GetSize()}")
    labels = sitk.Cast(img, sitk.sitkInt32)
    labels.CopyInformation(like)
    # Negative values are stray annotations (one hippocampus file holds -2): background.
    return sitk.Threshold(labels, lower=0, upper=2**31 - 1, outsideValue=0)


def spatial_dims(img: sitk.Image) -> int:
    """Number of axes with more than one voxel: a (H, W, 1) volume is a 2-D image."""
    return sum(n > 1 for n in img.GetSize())


def atomic_path(path: Path) -> Path:
    """A temporary sibling of ``path`` that keeps its suffix (ITK picks the writer by it)."""
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are read by other processes/users
    return Path(tmp)


def write_image(img: sitk.Image, path: str | os.PathLike) -> Path:
    """Write an image atomically (temporary name, then rename), so readers never see half.

    A .nii.gz is written uncompressed by ITK and gzipped by ISA-L at level 1: ITK's own zlib
    compression takes ~7 s for a 160×192×224 displacement field, ISA-L under one second,
    and any gzip reader opens the result.
    """
    path = Path(path)
    compress = path.name.endswith(".gz")
    raw = atomic_path(path.with_name(path.name.removesuffix(".gz"))) if compress else None
    tmp = atomic_path(path)
    try:
        if raw is None:
            sitk.WriteImage(img, str(tmp), useCompression=False)
        else:
            sitk.WriteImage(img, str(raw), useCompression=False)
            with open(raw, "rb") as src, igzip.open(tmp, "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        if raw is not None:
            raw.unlink(missing_ok=True)
    return path


def write_displacement(field: sitk.Image, path: str | os.PathLike) -> Path:
    """Write a displacement field in the ITK/ANTs convention.

    ``field`` is a vector image on the fixed grid, LPS millimetres, fixed point -> moving point.
    SimpleITK stores it as a 5-D NIfTI (X, Y, Z, 1, D) with the vector intent; float64 because
    ``sitk.DisplacementFieldTransform`` accepts nothing else. (The engine rounds the values to
    float32 precision first, so the zero low mantissa bits halve the compressed size.)
    """
    if field.GetPixelID() != sitk.sitkVectorFloat64:
        field = sitk.Cast(field, sitk.sitkVectorFloat64)
    return write_image(field, path)


def slice_as_2d(image: sitk.Image) -> sitk.Image:
    """A 2-D slice stored as a (H, W, 1) volume, as the 2-D image it is; others unchanged.

    Registration of a slice is a 2-D problem with a 2-component field. ``restore_layout``
    puts results back into the input's (H, W, 1) header.
    """
    if image.GetDimension() == 3 and spatial_dims(image) == 2:
        size = list(image.GetSize())
        if size[2] != 1:
            raise InputError(f"a 2-D image must be stored as (H, W) or (H, W, 1); got size "
                             f"{tuple(size)}")
        return sitk.Extract(image, size[:2] + [0], [0, 0, 0],
                            sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
    return image


def restore_layout(image: sitk.Image, like: sitk.Image) -> sitk.Image:
    """``image`` (computed on ``slice_as_2d(like)``) in ``like``'s layout and header.

    A 2-component field of a (H, W, 1) input becomes a (X, Y, 1, 1, 2) NIfTI with the input's
    affine, which SimpleITK reads back as the 2-D field of the 2-D image it reads the slice as.
    """
    if image.GetDimension() == like.GetDimension():
        return image
    volume = sitk.JoinSeries(image)
    volume.CopyInformation(like)
    return volume
