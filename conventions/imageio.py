"""Reading, validating and writing NIfTI images: the one owner of file-format conventions.

Geometry is always taken from SimpleITK, because the artifact contract is defined by how
SimpleITK (and therefore ITK/ANTs) reads the files: physical points are LPS millimetres,
``origin + direction @ (spacing * index)`` with ``index`` in ITK order (x, y, z). Arrays
obtained with ``sitk.GetArrayFromImage`` are in the reverse (numpy) order (z, y, x).

Headers are checked first (``conventions.header``, nibabel only), before SimpleITK reads the
voxels.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from isal import igzip

from conventions.errors import InputError
from conventions.header import DEFAULT_LIMITS, Limits, describe, inspect_header, short


def _sitk_read(path: Path, who: str) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(
            f"{who}: the file is truncated or corrupt "
            f"({short(exc, path).removeprefix('sitk::ERROR: ')})"
        ) from None


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
    who = describe(role, path)
    img = _sitk_read(path, who)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{who}: expected one value per voxel")
    return img, who


def read_image(path: str | os.PathLike, role: str, limits: Limits = DEFAULT_LIMITS) -> sitk.Image:
    """Read a 2-D or 3-D image as float32, with its geometry, or raise InputError."""
    img, who = _read_scalar(path, role, limits)
    _check_geometry(img, who)
    img = sitk.Cast(img, sitk.sitkFloat32)
    _check_finite(img, who)
    return img


def read_series(
    path: str | os.PathLike, role: str = "series", limits: Limits = DEFAULT_LIMITS
) -> list[sitk.Image]:
    """Read a 4-D series (X, Y, Z, N) as N float32 frames of shape (X, Y, Z)."""
    path = Path(path)
    info = inspect_header(path, role, series=True, limits=limits)
    who = describe(role, path)
    img = _sitk_read(path, who)
    if img.GetDimension() != 4 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{who}: expected a scalar 4-D series; read a {img.GetDimension()}-D image"
        )
    size = list(img.GetSize())
    frames = []
    for n in range(info.shape[3]):
        # Cast per frame: SimpleITK's Cast does not handle 4-D images.
        frame = sitk.Cast(
            sitk.Extract(
                img,
                size[:3] + [0],
                [0, 0, 0, n],
                sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX,
            ),
            sitk.sitkFloat32,
        )
        _check_geometry(frame, who)
        _check_finite(frame, f"{who} frame {n}")
        frames.append(frame)
    return frames


def read_labels(
    path: str | os.PathLike, role: str, like: sitk.Image, limits: Limits = DEFAULT_LIMITS
) -> sitk.Image:
    """Read an integer label map that lies on the same voxel grid as ``like``."""
    img, who = _read_scalar(path, role, limits)
    values = sitk.GetArrayViewFromImage(img)
    if not np.all(np.isfinite(values)) or not np.all(np.equal(np.mod(values, 1), 0)):
        raise InputError(f"{who}: labels must be whole numbers")
    if img.GetSize() != like.GetSize():
        raise InputError(
            f"{who}: label grid {img.GetSize()} differs from its image's grid {like.GetSize()}"
        )
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


def write_transform(field: sitk.Image, path: str | os.PathLike) -> Path:
    """Write a displacement field as an ITK transform file (``.h5``), atomically.

    ITK writes the field uncompressed (165 MB for a 160×192×224 brain); the datasets are
    rewritten gzip-compressed, which HDF5 readers (ITK's among them) undo transparently. The
    byte shuffle before it (HDF5's own filter, which every reader has) groups the float64s'
    bytes by significance, so the rounded-off low bytes form long runs: on a brain, 71 MB in
    1.3 s against 91 MB in 2.2 s without it.
    """
    import h5py  # only here: the gateway never writes transforms

    path = Path(path)
    raw, tmp = atomic_path(path), atomic_path(path)
    try:
        field = sitk.Cast(field, sitk.sitkVectorFloat64)
        sitk.WriteTransform(sitk.DisplacementFieldTransform(field), str(raw))
        with h5py.File(raw, "r") as src, h5py.File(tmp, "w") as dst:

            def copy(name: str, node: object) -> None:
                if isinstance(node, h5py.Dataset):
                    compress = (
                        {"compression": "gzip", "compression_opts": 1, "shuffle": True}
                        if node.size > 64
                        else {}
                    )
                    dst.create_dataset(name, data=node[()], **compress)
                elif isinstance(node, h5py.Group):
                    dst.require_group(name)

            src.visititems(copy)
        os.replace(tmp, path)
    finally:
        raw.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return path


def slice_as_2d(image: sitk.Image) -> sitk.Image:
    """A 2-D slice stored as a (H, W, 1) volume, as the 2-D image it is; others unchanged.

    Registration of a slice is a 2-D problem with a 2-component field. ``restore_layout``
    puts results back into the input's (H, W, 1) layout and header.
    """
    if image.GetDimension() == 3 and spatial_dims(image) == 2:
        size = list(image.GetSize())
        if size[2] != 1:
            raise InputError(
                f"a 2-D image must be stored as (H, W) or (H, W, 1); got size {tuple(size)}"
            )
        return sitk.Extract(
            image, size[:2] + [0], [0, 0, 0], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX
        )
    return image


def restore_layout(image: sitk.Image, like: sitk.Image) -> sitk.Image:
    """``image`` (computed on ``slice_as_2d(like)``) in ``like``'s layout and header.

    A displacement field of a (H, W, 1) input becomes a 3-component field on the input's 3-D
    grid, the slice normal's component 0: the field of the image as ITK reads it, so
    ``sitk.DisplacementFieldTransform`` and ``antsApplyTransforms -d 3`` apply it to the files
    as they are. (The in-plane components stay in the first two physical axes, as
    ``slice_as_2d`` takes the direction's in-plane block.)
    """
    if image.GetDimension() == like.GetDimension():
        return image
    if image.GetNumberOfComponentsPerPixel() == image.GetDimension() > 1:  # a field
        vectors = sitk.GetArrayFromImage(image)  # (H, W, 2)
        padded = np.concatenate([vectors, np.zeros_like(vectors[..., :1])], axis=-1)
        volume = sitk.GetImageFromArray(padded[None], isVector=True)  # (1, H, W, 3)
    else:
        volume = sitk.JoinSeries(image)
    volume.CopyInformation(like)
    return volume
