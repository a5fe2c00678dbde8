"""DICOM series in: a .zip or a folder of one series, checked and turned into the NIfTI the
pipeline registers.

pydicom and nibabel only (no SimpleITK, no torch), so the gateway refuses a bad zip before
anything is queued, and the worker (a series fetched from a PACS) and ``riir register`` run the
very same checks and conversion. The geometry is DICOM's own: Image Orientation (Patient) gives
the row and column directions, Pixel Spacing the in-plane spacing, and the slices are ordered by
their Image Position (Patient) projected on the slice normal, as GDCM's ImageSeriesReader (and
so every viewer built on ITK) orders them. DICOM patient coordinates are LPS millimetres, like
ITK's, so ``origin + direction @ (spacing * index)`` holds without a sign change; the NIfTI gets
the same affine in RAS, which is how SimpleITK reads it back.

A prepared series keeps, in the job folder, its instances (renamed ``0000.dcm`` … in slice
order: the DICOM outputs are built from them) and ``{role}.dicom.json``: the UIDs only (study,
series, frame of reference, instances), never the patient module, so nothing identifying is
copied into records or logs.

Error messages never repeat a member's name or a patient attribute: exported zips are often
named after the patient.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder

from conventions.errors import InputError
from conventions.header import DEFAULT_LIMITS, Limits

ZIP_MAGIC = b"PK\x03\x04"
MAX_MEMBERS = 4096  # files in one zip: a series of a few hundred slices, with room to spare
MAX_ZIP_BYTES = 2 << 30  # uncompressed, all members together
ORIENTATION_TOLERANCE = 1e-4  # direction cosines that differ by less are the same orientation
SPACING_TOLERANCE = 0.01  # relative: slice gaps within 1 % of each other are uniform
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM/ITK patient axes -> NIfTI's
SKIPPED_NAMES = {"DICOMDIR"}  # a media directory file that exports put beside the images
CHUNK = 1 << 20
# The geometry every slice must carry, with its number of values.
GEOMETRY_ATTRIBUTES = {"ImageOrientationPatient": 6, "ImagePositionPatient": 3, "PixelSpacing": 2}


@dataclass(frozen=True)
class Geometry:
    """A series' voxel grid in LPS millimetres, in ITK order (x = columns, y = rows, z = slices)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray  # (3, 3), columns: row direction, column direction, slice normal

    def affine_lps(self) -> np.ndarray:
        affine = np.eye(4)
        affine[:3, :3] = self.direction * np.asarray(self.spacing)
        affine[:3, 3] = self.origin
        return affine


@dataclass(frozen=True)
class Series:
    """One checked series: its instances in slice order and its grid."""

    instances: list[Dataset]
    geometry: Geometry

    @property
    def first(self) -> Dataset:
        return self.instances[0]

    def identity(self) -> dict[str, object]:
        """What a job may keep about the series: UIDs and the modality, nothing identifying."""
        first = self.first
        return {
            "study_uid": str(first.StudyInstanceUID),
            "series_uid": str(first.SeriesInstanceUID),
            "frame_of_reference_uid": str(first.FrameOfReferenceUID),
            "modality": str(first.get("Modality", "")),
            "sop_class_uid": str(first.SOPClassUID),
            "instances": [str(ds.SOPInstanceUID) for ds in self.instances],
        }


def is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == ZIP_MAGIC


# -- the zip ---------------------------------------------------------------------------------


def _safe_member(name: str) -> bool:
    """False for a name that would leave the folder it is unpacked into (``../``, ``/etc``,
    ``C:\\``). We never use the name for writing, but such a zip is hostile or broken."""
    path = PurePosixPath(name.replace("\\", "/"))
    return not (path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]))


def extract_zip(
    archive: Path,
    dest: Path,
    who: str,
    max_members: int = MAX_MEMBERS,
    max_bytes: int = MAX_ZIP_BYTES,
) -> list[Path]:
    """Unpack ``archive``'s files into ``dest`` under names of our own (``00000.dcm`` …).

    A zip bomb is refused on what the directory declares (members, total size) and again on
    what actually comes out, counted as it is written, since a directory can lie.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{who}: not a readable zip archive ({exc})") from None
    with zf:
        members = [
            m
            for m in zf.infolist()
            if not m.is_dir()
            and PurePosixPath(m.filename).name not in SKIPPED_NAMES
            and not m.filename.startswith("__MACOSX/")
        ]
        if not all(_safe_member(m.filename) for m in zf.infolist()):
            raise InputError(
                f"{who}: the zip has a member whose path leaves the archive (absolute or with "
                "'..'); refusing it"
            )
        if not members:
            raise InputError(f"{who}: the zip holds no files")
        if len(members) > max_members:
            raise InputError(
                f"{who}: the zip holds {len(members)} files; at most {max_members} are accepted"
            )
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            raise InputError(
                f"{who}: the zip unpacks to {declared / 2**20:.0f} MiB; the limit is "
                f"{max_bytes / 2**20:.0f} MiB"
            )
        dest.mkdir(parents=True, exist_ok=True)
        written, paths = 0, []
        for k, member in enumerate(members):
            path = dest / f"{k:05d}.dcm"
            try:
                with zf.open(member) as src, open(path, "wb") as dst:
                    while block := src.read(CHUNK):
                        written += len(block)
                        if written > max_bytes:
                            raise InputError(
                                f"{who}: the zip unpacks to more than its directory declares "
                                f"(past {max_bytes / 2**20:.0f} MiB); refusing it"
                            )
                        dst.write(block)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                # NotImplementedError: an unsupported compression method; BadZipFile: a CRC
                raise InputError(f"{who}: file #{k + 1} of the zip is damaged ({exc})") from None
            paths.append(path)
    return paths


# -- the series ------------------------------------------------------------------------------


def _read(path: Path, who: str, k: int) -> Dataset:
    try:
        # defer_size: pixel data stays on disk until the series is known to be good
        return pydicom.dcmread(path, defer_size="256 KB")
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as exc:
        raise InputError(
            f"{who}: file #{k + 1} is not a DICOM file ({type(exc).__name__})"
        ) from None


def read_instances(paths: list[Path], who: str) -> list[Dataset]:
    instances = [_read(p, who, k) for k, p in enumerate(paths)]
    for k, ds in enumerate(instances):
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
            if keyword not in ds:
                raise InputError(f"{who}: file #{k + 1} has no {keyword}")
    return instances


def choose_series(
    instances: list[Dataset], who: str, series_uid: str | None, choose_with: str
) -> list[Dataset]:
    """The instances of one series: the only one, or the one ``series_uid`` names."""
    counts = Counter(str(ds.SeriesInstanceUID) for ds in instances)
    if series_uid is not None:
        if series_uid not in counts:
            raise InputError(f"{who}: no series {series_uid} in it (it holds {', '.join(counts)})")
    elif len(counts) > 1:
        modality = {str(ds.SeriesInstanceUID): ds.get("Modality", "?") for ds in instances}
        listed = "; ".join(f"{uid} ({modality[uid]}, {n} files)" for uid, n in counts.items())
        raise InputError(
            f"{who}: it holds {len(counts)} series: {listed}; send one series, or choose one "
            f"with {choose_with}"
        )
    else:
        series_uid = next(iter(counts))
    return [ds for ds in instances if str(ds.SeriesInstanceUID) == series_uid]


def _check_image(ds: Dataset, who: str, k: int) -> None:
    if "PixelData" not in ds or "Rows" not in ds or "Columns" not in ds:
        name = pydicom.uid.UID(str(ds.get("SOPClassUID", ""))).name or "unknown SOP class"
        raise InputError(f"{who}: file #{k + 1} is not an image ({name})")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError(
            f"{who}: file #{k + 1} is a multi-frame image; send a series of single-frame images"
        )
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{who}: colour images are not supported (file #{k + 1})")
    syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax is None:
        raise InputError(f"{who}: file #{k + 1} has no transfer syntax in its file meta")
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise InputError(
            f"{who}: the transfer syntax {syntax.name or syntax} of file #{k + 1} cannot be "
            "decoded here; send it uncompressed or in a JPEG/JPEG 2000/RLE syntax"
        )
    for keyword, count in GEOMETRY_ATTRIBUTES.items():
        if keyword not in ds or count != ds[keyword].VM:
            raise InputError(f"{who}: file #{k + 1} has no usable {keyword}")


def _plane(
    instances: list[Dataset], who: str
) -> tuple[np.ndarray, np.ndarray, int, int, np.ndarray]:
    """The plane every instance shares: row and column directions, rows, columns, and Pixel
    Spacing (row spacing, column spacing); InputError when they differ."""
    first = instances[0]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    rows, cols = int(first.Rows), int(first.Columns)
    spacing = np.asarray(first.PixelSpacing, dtype=np.float64)
    for ds in instances[1:]:
        if np.abs(np.asarray(ds.ImageOrientationPatient, float) - orientation).max() > (
            ORIENTATION_TOLERANCE
        ):
            raise InputError(
                f"{who}: the images have different orientations (Image Orientation (Patient)); "
                "a series must be one stack of parallel slices"
            )
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols) or not np.allclose(
            np.asarray(ds.PixelSpacing, float), spacing, rtol=1e-4
        ):
            raise InputError(f"{who}: the images differ in size or pixel spacing")
        if ds.get("FrameOfReferenceUID") != first.get("FrameOfReferenceUID"):
            raise InputError(f"{who}: the images lie in different frames of reference")
    row_dir, col_dir = orientation[:3], orientation[3:]
    if not (
        abs(np.linalg.norm(row_dir) - 1) < 1e-3
        and abs(np.linalg.norm(col_dir) - 1) < 1e-3
        and abs(row_dir @ col_dir) < 1e-3
    ):
        raise InputError(f"{who}: Image Orientation (Patient) is not two orthonormal directions")
    return row_dir, col_dir, rows, cols, spacing


def _thickness(ds: Dataset) -> float:
    return float(ds.get("SliceThickness") or 1.0)


def geometry(
    instances: list[Dataset], who: str, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[Dataset], Geometry]:
    """The instances in slice order and the series' grid; InputError when they do not make
    one regular grid (mixed orientations or sizes, missing, duplicated or uneven slices)."""
    row_dir, col_dir, rows, cols, spacing = _plane(instances, who)
    normal = np.cross(row_dir, col_dir)
    positions = np.asarray([ds.ImagePositionPatient for ds in instances], dtype=np.float64)
    order = np.argsort(positions @ normal, kind="stable")
    instances = [instances[i] for i in order]
    positions = positions[order]
    slice_spacing = 1.0
    if len(instances) > 1:
        steps = np.diff(positions, axis=0)
        gaps = steps @ normal
        if gaps.min() < 1e-3:
            raise InputError(
                f"{who}: two images lie at the same position (duplicates, or several "
                "acquisitions in one series)"
            )
        slice_spacing = float(np.median(gaps))
        if np.abs(gaps - slice_spacing).max() > SPACING_TOLERANCE * slice_spacing:
            raise InputError(
                f"{who}: the slices are not uniformly spaced (gaps from {gaps.min():.3g} to "
                f"{gaps.max():.3g} mm): a slice is missing, or the series mixes stacks"
            )
        off_axis = np.linalg.norm(steps - np.outer(gaps, normal), axis=1).max()
        if off_axis > 0.01 * slice_spacing:
            raise InputError(
                f"{who}: the slices are sheared (gantry tilt): successive positions do not "
                "follow the slice normal"
            )
    else:
        slice_spacing = _thickness(instances[0])
    size = (cols, rows, len(instances))
    voxels = cols * rows * len(instances)
    if voxels > limits.max_voxels:
        raise InputError(f"{who}: {size} voxels is more than {limits.max_voxels}")
    grid = Geometry(
        size=size,
        spacing=(float(spacing[1]), float(spacing[0]), slice_spacing),
        origin=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=np.stack([row_dir, col_dir, normal], axis=1),
    )
    return instances, grid


def check_series(instances: list[Dataset], who: str, limits: Limits = DEFAULT_LIMITS) -> Series:
    for k, ds in enumerate(instances):
        _check_image(ds, who, k)
    ordered, grid = geometry(instances, who, limits)
    return Series(ordered, grid)


def voxels(series: Series, who: str) -> np.ndarray:
    """The series' values in modality units (Rescale Slope/Intercept applied), float32,
    in ITK order (x, y, z)."""
    planes = []
    for k, ds in enumerate(series.instances):
        try:
            plane = ds.pixel_array.astype(np.float32)
        except Exception as exc:  # a decoder's own error types vary by plugin
            raise InputError(
                f"{who}: the pixel data of slice {k + 1} cannot be decoded ({type(exc).__name__})"
            ) from None
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        planes.append(plane * slope + intercept)
    stack = np.stack(planes)  # (z, rows, cols)
    if not np.all(np.isfinite(stack)):
        raise InputError(f"{who}: the pixel data holds NaN or infinite values")
    return np.ascontiguousarray(stack.transpose(2, 1, 0))


def _save_nifti(values: np.ndarray, grid: Geometry, path: Path) -> Path:
    """``values`` in ITK order on ``grid``, as a NIfTI whose affine is the DICOM grid (RAS,
    as NIfTI stores it; SimpleITK reads back the LPS grid)."""
    affine = LPS_TO_RAS @ grid.affine_lps()
    image = nib.Nifti1Image(values, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def write_nifti(series: Series, path: Path, who: str) -> Path:
    """The series as the float32 NIfTI volume the pipeline registers."""
    return _save_nifti(voxels(series, who), series.geometry, path)


def frames(instances: list[Dataset], who: str, limits: Limits = DEFAULT_LIMITS) -> Series:
    """A series of 2-D frames of one plane (a time series, e.g. MOLLI), in Instance Number
    order; its geometry is one frame's."""
    for k, ds in enumerate(instances):
        _check_image(ds, who, k)
    row_dir, col_dir, rows, cols, spacing = _plane(instances, who)
    positions = np.asarray([ds.ImagePositionPatient for ds in instances], dtype=np.float64)
    if np.abs(positions - positions[0]).max() > 1e-3:
        raise InputError(
            f"{who}: register-series takes 2-D frames of one plane; these images lie at "
            f"{len(np.unique(positions.round(3), axis=0))} positions"
        )
    if not 2 <= len(instances) <= limits.max_frames:
        raise InputError(f"{who}: a series needs 2 to {limits.max_frames} frames")
    if rows * cols > limits.max_voxels:
        raise InputError(f"{who}: frames of {cols} x {rows} are larger than the limit")
    ordered = sorted(instances, key=lambda ds: int(ds.get("InstanceNumber") or 0))
    grid = Geometry(
        size=(cols, rows, 1),
        spacing=(float(spacing[1]), float(spacing[0]), _thickness(instances[0])),
        origin=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=np.stack([row_dir, col_dir, np.cross(row_dir, col_dir)], axis=1),
    )
    return Series(ordered, grid)


def prepare_frames(
    source: Path, folder: Path, who: str, limits: Limits = DEFAULT_LIMITS
) -> dict[str, str]:
    """A zip or folder of one series of 2-D frames as the 4-D NIfTI (X, Y, 1, N) that
    register-series takes."""
    scratch = folder / ".series_unpacked"
    try:
        instances = read_instances(_source_files(source, scratch, who), who)
        series = frames(choose_series(instances, who, None, "one series per zip"), who, limits)
        values = voxels(series, who)  # (x, y, N): one frame per "slice"
        _save_nifti(values[:, :, None, :], series.geometry, folder / "series.nii.gz")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"series": "series.nii.gz"}


# -- a series into a job folder --------------------------------------------------------------


def prepare(
    files: list[Path],
    folder: Path,
    role: str,
    who: str,
    *,
    series_uid: str | None = None,
    choose_with: str = "its Series Instance UID",
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, str]:
    """Check DICOM ``files`` and write into ``folder``: ``{role}.nii.gz`` (what is
    registered), ``{role}_dicom/`` (the chosen series' instances in slice order) and
    ``{role}.dicom.json`` (its UIDs). Return the job's input names: role -> file name."""
    instances = choose_series(read_instances(files, who), who, series_uid, choose_with)
    series = check_series(instances, who, limits)
    kept = folder / f"{role}_dicom"
    kept.mkdir(exist_ok=True)
    for k, ds in enumerate(series.instances):
        shutil.copyfile(ds.filename, kept / f"{k:04d}.dcm")
    nifti = write_nifti(series, folder / f"{role}.nii.gz", who)
    identity = folder / f"{role}.dicom.json"
    identity.write_text(json.dumps(series.identity(), indent=1))
    return {role: nifti.name, f"{role}_dicom": kept.name}


def _source_files(source: Path, scratch: Path, who: str) -> list[Path]:
    """The files of a DICOM folder (searched recursively) or of a zip (unpacked to
    ``scratch``)."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.name not in SKIPPED_NAMES)
        if not files:
            raise InputError(f"{who}: the folder holds no files")
        return files
    return extract_zip(source, scratch, who)


def prepare_source(
    source: Path,
    folder: Path,
    role: str,
    who: str | None = None,
    *,
    series_uid: str | None = None,
    choose_with: str = "its Series Instance UID",
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, str]:
    """``prepare`` on a folder of DICOM files or a zip of them (unpacked to a scratch folder
    in ``folder``, removed after)."""
    who = who or f"{role} '{source.name}'"
    scratch = folder / f".{role}_unpacked"
    try:
        files = _source_files(source, scratch, who)
        return prepare(
            files, folder, role, who, series_uid=series_uid, choose_with=choose_with, limits=limits
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_kept(folder: Path) -> list[Dataset]:
    """The instances ``prepare`` kept, in slice order."""
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
