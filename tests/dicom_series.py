"""Synthetic DICOM series for the tests: small CT volumes written with pydicom (never real
data), with the attributes the CT Image IOD requires, so outputs built from them can be
checked with dciodvfy."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT = {"PatientName": "Doe^Jane^Q", "PatientID": "PID-4711", "PatientBirthDate": "19700101"}


def ct_series(
    volume: np.ndarray,
    folder: Path,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 2.0),
    origin: Sequence[float] = (-10.0, -12.0, 5.0),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_uid: str | None = None,
    description: str = "synthetic",
    series_number: int = 1,
    frames: bool = False,
) -> list[Path]:
    """Write ``volume`` (ITK order: x = columns, y = rows, z = slices; values in HU) as one CT
    slice per file, returning the paths in a shuffled order (as a PACS export would).
    ``frames``: every slice at the same position (a time series of one plane)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    cols, rows, slices = volume.shape
    stored = np.round(volume + 1024).astype(np.uint16)  # RescaleIntercept -1024
    paths = []
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.update(PATIENT)
        ds.PatientSex = "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "CT", series_number, description
        ds.PatientPosition, ds.Laterality = "HFS", ""
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.Manufacturer = "RIIR tests"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.ContentDate, ds.ContentTime = "20260101", "120000"
        ds.PatientOrientation = ""
        position = np.asarray(origin, float) + (0 if frames else k) * spacing[2] * normal
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing, column spacing
        ds.SliceThickness = float(spacing[2])
        ds.KVP, ds.AcquisitionNumber = "120", 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (rows, cols)
        path = folder / f"slice_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    rng = np.random.default_rng(len(paths))
    return [paths[i] for i in rng.permutation(len(paths))]


def zip_files(paths: Sequence[Path], archive: Path, names: Sequence[str] | None = None) -> Path:
    """A zip of ``paths`` under ``names`` taken as they are (``ZipFile.write`` would clean a
    hostile name such as ``../x``; a hostile client does not)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, path in enumerate(paths):
            info = zipfile.ZipInfo(names[k] if names else f"series/{path.name}")
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return archive


def read_datasets(paths: Sequence[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in paths]
