"""DICOM out: a registration of two DICOM series as DICOM objects a PACS can store.

Three objects, built from the NIfTI artifacts of the contract and the inputs' instances
(kept in slice order by ``conventions.dicom.prepare``):

- ``registration.dcm``: a Deformable Spatial Registration object (PS3.3 A.39.2). Its Frame
  of Reference is the fixed series' (the *Registered RCS*); its one Deformable Registration
  Sequence item names the moving series' Frame of Reference (the *Source RCS*) and images, and
  carries the displacement field as a Deformable Registration Grid on the fixed grid. By
  C.20.3.1.1 a point P of the Registered RCS maps to ``M_post · (M_pre · P + D(P))`` in the
  Source RCS; we write no matrices (both identity), so ``P_moving = P_fixed + D``: the ITK
  displacement field's own convention (fixed point -> moving point). DICOM patient coordinates
  are LPS millimetres like ITK's, so the vectors are ``displacement.nii.gz``'s values as they
  are, x fastest, then y, then z (C.20.3.1.3).
- ``warped_dicom.zip``: the warped moving series as a derived series on the fixed grid: one
  instance per fixed slice (its position and orientation), the fixed Frame of Reference, the
  moving series' patient, study, SOP class and pixel encoding, a new Series Instance UID.
- ``warped_labels_seg.dcm`` (when labels were given): the warped moving labels as a DICOM SEG
  (highdicom) whose source images are the warped series' instances.
"""

from __future__ import annotations

import copy
import io
import zipfile
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conventions import artifacts
from conventions.version import __version__

DEFORMABLE_SPATIAL_REGISTRATION = "1.2.840.10008.5.1.4.1.1.66.3"
MANUFACTURER = "RIIR"
MODEL_NAME = "RIIR registration service"
DEVICE_SERIAL = "0"  # a software device has none; Enhanced General Equipment requires one
SERIES_NUMBER_OFFSET = 9000  # derived series get numbers that do not clash with the scanner's
PATIENT_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
)
STUDY_KEYWORDS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _now() -> tuple[str, str]:
    now = datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _copy(source: Dataset, target: Dataset, keywords: tuple[str, ...]) -> None:
    """Type 2 attributes: present (empty if the source lacks them)."""
    for keyword in keywords:
        setattr(target, keyword, source.get(keyword, ""))


def _file_meta(ds: Dataset) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta


def _reference(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def _series_reference(series: list[Dataset]) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = series[0].SeriesInstanceUID
    item.ReferencedInstanceSequence = [_reference(ds) for ds in series]
    return item


def _equipment(ds: Dataset) -> None:
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.DeviceSerialNumber = DEVICE_SERIAL
    ds.SoftwareVersions = __version__


# -- the Deformable Spatial Registration object ----------------------------------------------


def grid_vectors(field: sitk.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A displacement field's vectors as DICOM stores them: (N, 3) float32, x fastest. A
    single slice's field may read as a 2-D image (SimpleITK drops the singleton axis) with 3
    components (LPS vectors of an oblique slice) or 2 (in-plane only: a zero third one)."""
    array = sitk.GetArrayFromImage(field).astype(np.float32)  # (z, y, x, D) or (y, x, D)
    if field.GetDimension() == 2:
        array = array[None]
    if array.shape[-1] == 2:
        array = np.concatenate([array, np.zeros_like(array[..., :1])], axis=-1)
    z, y, x = array.shape[:3]
    return array.reshape(-1, 3), (x, y, z)


def registration_object(
    field: sitk.Image, fixed: list[Dataset], moving: list[Dataset], description: str
) -> Dataset:
    """The DSRO: the field as a grid on the fixed series' first slice, fixed FoR -> moving FoR."""
    first = fixed[0]
    date, time = _now()
    ds = Dataset()
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 100")
    ds.SOPClassUID = DEFORMABLE_SPATIAL_REGISTRATION
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    _copy(first, ds, PATIENT_KEYWORDS + STUDY_KEYWORDS)  # it lives with the fixed series
    ds.Modality = "REG"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = SERIES_NUMBER_OFFSET + 1
    ds.SeriesDescription = description
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.Laterality = first.get("Laterality", "")  # type 2C: dciodvfy wants it present
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID  # the Registered RCS
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    _equipment(ds)
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceNumber = 1
    ds.ContentLabel = "RIIR"
    ds.ContentDescription = description
    ds.ContentCreatorName = ""

    vectors, dims = grid_vectors(field)
    grid = Dataset()
    grid.ImageOrientationPatient = list(first.ImageOrientationPatient)
    grid.ImagePositionPatient = list(first.ImagePositionPatient)
    grid.GridDimensions = list(dims)
    spacing = list(field.GetSpacing())
    if len(spacing) == 2:
        spacing.append(float(first.get("SliceThickness", 1.0) or 1.0))
    grid.GridResolution = [float(s) for s in spacing]
    grid.VectorGridData = vectors.astype("<f4").tobytes()

    item = Dataset()
    item.SourceFrameOfReferenceUID = moving[0].FrameOfReferenceUID  # the Source RCS
    item.ReferencedImageSequence = [_reference(m) for m in moving]
    item.FrameOfReferenceTransformationComment = "RIIR: fixed point + vector = moving point"
    code = Dataset()
    alignment = codes.DCM.ImageContentBasedAlignment
    code.CodeValue, code.CodingSchemeDesignator = alignment.value, alignment.scheme_designator
    code.CodeMeaning = alignment.meaning
    item.RegistrationTypeCodeSequence = [code]
    item.DeformableRegistrationGridSequence = [grid]
    ds.DeformableRegistrationSequence = [item]

    # Common Instance Reference: both series, by study (the moving may be in another study).
    same_study = [s for s in (fixed, moving) if s[0].StudyInstanceUID == first.StudyInstanceUID]
    ds.ReferencedSeriesSequence = [_series_reference(s) for s in same_study]
    if moving[0].StudyInstanceUID != first.StudyInstanceUID:
        other = Dataset()
        other.StudyInstanceUID = moving[0].StudyInstanceUID
        other.ReferencedSeriesSequence = [_series_reference(moving)]
        ds.StudiesContainingOtherReferencedInstancesSequence = [other]
    _file_meta(ds)
    return ds


def field_from_registration(ds: Dataset) -> sitk.Image:
    """The DSRO's grid as an ITK displacement field (what a reader of our objects does)."""
    grid = ds.DeformableRegistrationSequence[0].DeformableRegistrationGridSequence[0]
    x, y, z = (int(n) for n in grid.GridDimensions)
    vectors = np.frombuffer(grid.VectorGridData, dtype="<f4").reshape(z, y, x, 3)
    field = sitk.GetImageFromArray(vectors.astype(np.float64), isVector=True)
    row, col = (
        np.asarray(grid.ImageOrientationPatient[:3]),
        np.asarray(grid.ImageOrientationPatient[3:]),
    )
    field.SetDirection(np.stack([row, col, np.cross(row, col)], axis=1).ravel().tolist())
    field.SetOrigin([float(v) for v in grid.ImagePositionPatient])
    field.SetSpacing([float(v) for v in grid.GridResolution])
    return field


# -- the derived (warped) series -------------------------------------------------------------


def _stored(values: np.ndarray, template: Dataset) -> np.ndarray:
    """Modality values in the template's pixel encoding (its rescale, bits and sign)."""
    slope = float(template.get("RescaleSlope", 1) or 1)
    intercept = float(template.get("RescaleIntercept", 0) or 0)
    bits, signed = int(template.BitsStored), int(template.PixelRepresentation) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16}.get(
        (int(template.BitsAllocated), signed), np.int16
    )
    return np.clip(np.round((values - intercept) / slope), low, high).astype(dtype)


# Attributes of the moving instances that describe its own pixels or acquisition position
# and no longer hold for a slice resampled onto the fixed grid.
STALE = (
    "SliceLocation",
    "LargestImagePixelValue",
    "SmallestImagePixelValue",
    "SourceImageSequence",
    "ReferencedImageSequence",
    "DerivationDescription",
)


def warped_series(
    warped: sitk.Image, fixed: list[Dataset], moving: list[Dataset], description: str
) -> list[Dataset]:
    """One derived instance per fixed slice; values from ``warped`` (the fixed grid)."""
    planes = sitk.GetArrayFromImage(warped)  # (z, rows, cols) or (rows, cols)
    planes = planes.reshape(len(fixed), int(fixed[0].Rows), int(fixed[0].Columns))
    template = copy.deepcopy(moving[0])
    del template.PixelData
    for keyword in STALE:
        if keyword in template:
            delattr(template, keyword)
    template.remove_private_tags()
    series_uid = generate_uid()
    date, time = _now()
    out = []
    for k, (slice_, plane) in enumerate(zip(fixed, planes, strict=True)):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = SERIES_NUMBER_OFFSET + int(moving[0].get("SeriesNumber", 0) or 0)
        ds.SeriesDescription = description
        ds.SeriesDate, ds.SeriesTime = date, time
        ds.ContentDate, ds.ContentTime = date, time
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "SECONDARY", *list(moving[0].get("ImageType", []))[2:]]
        ds.DerivationDescription = "moving series resampled onto the fixed series' grid (RIIR)"
        ds.SourceImageSequence = [_reference(slice_)]  # the slice whose geometry it takes
        ds.FrameOfReferenceUID = slice_.FrameOfReferenceUID
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            setattr(ds, keyword, copy.deepcopy(slice_[keyword].value))
        if "SliceThickness" in slice_:
            ds.SliceThickness = slice_.SliceThickness
        ds.Rows, ds.Columns = slice_.Rows, slice_.Columns
        pixels = _stored(plane, template)
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OB" if pixels.itemsize == 1 else "OW"
        _file_meta(ds)
        out.append(ds)
    return out


def warped_values(series: list[Dataset]) -> np.ndarray:
    """(z, rows, cols) modality values of a derived series (the inverse of ``_stored``)."""
    return np.stack(
        [
            ds.pixel_array * float(ds.get("RescaleSlope", 1) or 1)
            + float(ds.get("RescaleIntercept", 0) or 0)
            for ds in series
        ]
    )


# -- the segmentation ------------------------------------------------------------------------


def segmentation(
    labels: sitk.Image, source: list[Dataset], description: str
) -> hd.seg.Segmentation:
    """The warped labels as a binary SEG, one segment per label value, on ``source``."""
    array = sitk.GetArrayFromImage(labels).reshape(
        len(source), int(source[0].Rows), int(source[0].Columns)
    )
    values = [int(v) for v in np.unique(array) if v > 0]
    # highdicom wants segments numbered 1, 2, …: renumber, and keep the label value in its name
    renumbered = np.zeros(array.shape, np.uint8 if len(values) < 256 else np.uint16)
    for number, value in enumerate(values, start=1):
        renumbered[array == value] = number
    algorithm = hd.AlgorithmIdentificationSequence(
        name="RIIR", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"label {value}",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, value in enumerate(values, start=1)
    ]
    if not segments:  # an empty label map still says "nothing here", with one empty segment
        segments = [
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="background only",
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=codes.SCT.Tissue,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        ]
    return hd.seg.Segmentation(
        source_images=source,
        pixel_array=renumbered,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER_OFFSET + 2,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=__version__,
        device_serial_number=DEVICE_SERIAL,
        series_description=description,
        omit_empty_frames=False,
    )


# -- all of them -----------------------------------------------------------------------------


def _write(ds: Dataset, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return path


def _write_zip(series: list[Dataset], path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, ds in enumerate(series):
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            zf.writestr(f"IM{k + 1:05d}.dcm", buffer.getvalue())
    tmp.replace(path)
    return path


def write_dicom_artifacts(out_dir: Path, fixed: list[Dataset], moving: list[Dataset]) -> None:
    """Write the DICOM artifacts of a finished registration in ``out_dir`` (its NIfTI
    artifacts are read back from there, so the DICOM says exactly what they say)."""
    field = sitk.ReadImage(
        str(out_dir / artifacts.filename("displacement")), sitk.sitkVectorFloat64
    )
    warped = sitk.ReadImage(str(out_dir / artifacts.filename("warped")))
    fixed_name = fixed[0].get("SeriesDescription", "") or "fixed series"
    _write(
        registration_object(field, fixed, moving, f"RIIR registration to {fixed_name}"[:64]),
        out_dir / artifacts.filename("dicom_registration"),
    )
    derived = warped_series(warped, fixed, moving, f"RIIR warped to {fixed_name}"[:64])
    _write_zip(derived, out_dir / artifacts.filename("dicom_warped"))
    labels_path = out_dir / artifacts.filename("labels")
    if labels_path.is_file():
        seg = segmentation(sitk.ReadImage(str(labels_path)), derived, "RIIR warped labels")
        _write(seg, out_dir / artifacts.filename("dicom_seg"))


def read_zip(path: Path) -> list[Dataset]:
    """The instances of a zip written by ``_write_zip``, in order."""
    with zipfile.ZipFile(path) as zf:
        return [pydicom.dcmread(io.BytesIO(zf.read(name))) for name in sorted(zf.namelist())]


def read_results(out_dir: Path) -> list[Dataset]:
    """Every DICOM artifact in ``out_dir`` as datasets (what is stored in a PACS)."""
    found: list[Dataset] = []
    for name in ("dicom_registration", "dicom_seg"):
        path = out_dir / artifacts.filename(name)
        if path.is_file():
            found.append(pydicom.dcmread(path))
    warped = out_dir / artifacts.filename("dicom_warped")
    if warped.is_file():
        found.extend(read_zip(warped))
    return found
