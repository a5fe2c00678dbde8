"""DICOM in and out without the service: geometry as GDCM reads it, refusals of bad series and
zips, the outputs valid by dciodvfy, and the registration object reproducing the warped series."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_series import PATIENT, ct_series, zip_files
from helpers import blobs

from conventions import artifacts, dicom, dicom_export
from conventions.errors import InputError
from conventions.options import RegistrationOptions

SHAPE = (20, 24, 16)  # x (columns), y (rows), z (slices)


def _volume(seed: int) -> np.ndarray:
    return np.round(blobs(SHAPE, seed=seed) * 1000)


def _gdcm(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize(
    "orientation", [(1, 0, 0, 0, 1, 0), (0.8, 0.6, 0, -0.6, 0.8, 0), (1, 0, 0, 0, 0, -1)]
)
def test_grid_is_the_one_gdcm_reads(tmp_path: Path, orientation: tuple[float, ...]) -> None:
    """Axial, oblique and coronal stacks (files shuffled): the NIfTI made from the series has
    GDCM's origin, spacing, direction and values (modality units)."""
    volume = _volume(0)
    files = ct_series(volume, tmp_path / "series", spacing=(0.7, 0.9, 2.5), orientation=orientation)
    names = dicom.prepare(files, tmp_path, "fixed", "fixed")
    ours, gdcm = sitk.ReadImage(str(tmp_path / names["fixed"])), _gdcm(tmp_path / "series")
    np.testing.assert_allclose(ours.GetOrigin(), gdcm.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ours.GetSpacing(), gdcm.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(ours.GetDirection(), gdcm.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(gdcm))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), volume.transpose(2, 1, 0))
    kept = dicom.load_kept(tmp_path / names["fixed_dicom"])
    assert [int(ds.InstanceNumber) for ds in kept] == list(range(1, SHAPE[2] + 1))


def _refused(files: list[Path], folder: Path, *words: str, **kwargs: object) -> None:
    with pytest.raises(InputError) as caught:
        dicom.prepare(files, folder, "fixed", "fixed", **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    for word in words:
        assert word.lower() in message.lower(), message
    for value in PATIENT.values():  # never a patient attribute in a message
        assert value.split("^")[0] not in message


def test_several_series_are_named_and_one_can_be_chosen(tmp_path: Path) -> None:
    a = ct_series(_volume(0), tmp_path / "a")
    b = ct_series(_volume(1), tmp_path / "b", series_number=2)
    uid_a, uid_b = (str(pydicom.dcmread(s[0]).SeriesInstanceUID) for s in (a, b))
    _refused(a + b, tmp_path, "2 series", uid_a, uid_b, choose_with="the field 'x_uid'")
    names = dicom.prepare(a + b, tmp_path, "fixed", "fixed", series_uid=uid_b)
    kept = dicom.load_kept(tmp_path / names["fixed_dicom"])
    assert {str(ds.SeriesInstanceUID) for ds in kept} == {uid_b} and len(kept) == SHAPE[2]
    _refused(a, tmp_path, "no series", series_uid=uid_b)


def test_missing_slice(tmp_path: Path) -> None:
    files = sorted(ct_series(_volume(0), tmp_path / "s"))
    _refused(files[:5] + files[6:], tmp_path, "not uniformly spaced", "missing")


def test_duplicate_slice(tmp_path: Path) -> None:
    files = sorted(ct_series(_volume(0), tmp_path / "s"))
    copy = tmp_path / "copy.dcm"
    ds = pydicom.dcmread(files[3])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(copy)
    _refused([*files, copy], tmp_path, "same position")


def test_mixed_orientations(tmp_path: Path) -> None:
    files = sorted(ct_series(_volume(0), tmp_path / "s"))
    ds = pydicom.dcmread(files[2])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]
    ds.save_as(files[2])
    _refused(files, tmp_path, "different orientations")


def test_undecodable_transfer_syntax(tmp_path: Path) -> None:
    files = ct_series(_volume(0), tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML  # no decoder exists for it here
    ds.PixelData = pydicom.encaps.encapsulate([bytes(64)])  # any stream: it is never decoded
    ds.save_as(files[0], enforce_file_format=False)
    _refused(files, tmp_path, "transfer syntax", "cannot be decoded")


def test_non_image_object(tmp_path: Path) -> None:
    files = ct_series(_volume(0), tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    del ds.PixelData
    ds.SOPClassUID = pydicom.uid.BasicTextSRStorage
    ds.save_as(files[0], enforce_file_format=False)
    _refused(files, tmp_path, "not an image", "Basic Text SR")


def test_not_dicom(tmp_path: Path) -> None:
    files = ct_series(_volume(0), tmp_path / "s")
    (tmp_path / "notes.txt").write_text("hello")
    _refused([*files, tmp_path / "notes.txt"], tmp_path, "not a DICOM file")


def _zip_refused(archive: Path, dest: Path, *words: str, **kwargs: int) -> None:
    with pytest.raises(InputError) as caught:
        dicom.extract_zip(archive, dest, "fixed", **kwargs)
    for word in words:
        assert word.lower() in str(caught.value).lower(), caught.value
    assert not dest.exists() or not any(dest.iterdir()) or "damaged" in words


def test_zip_path_traversal(tmp_path: Path) -> None:
    files = ct_series(_volume(0), tmp_path / "s")
    for name in ("../evil.dcm", "/etc/evil.dcm", "a/../../evil.dcm", "C:\\evil.dcm"):
        archive = zip_files(files[:2], tmp_path / "bad.zip", names=["ok.dcm", name])
        _zip_refused(archive, tmp_path / "out", "leaves the archive")
    assert not (tmp_path / "evil.dcm").exists()


def test_zip_bomb_limits(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for k in range(3):
            zf.writestr(f"{k}.dcm", bytes(4 << 20))  # 12 MiB of zeros, a few KiB compressed
    assert archive.stat().st_size < 100_000
    _zip_refused(archive, tmp_path / "out", "unpacks to", max_bytes=8 << 20)
    _zip_refused(archive, tmp_path / "out2", "3 files", max_members=2)


def test_zip_of_a_series(tmp_path: Path) -> None:
    """Members in sub-folders, a DICOMDIR beside them: the series is found."""
    files = ct_series(_volume(0), tmp_path / "s")
    names = [f"PATIENT/STUDY/{k}" for k in range(len(files))]
    archive = zip_files(files, tmp_path / "series.zip", names=names)
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("DICOMDIR", b"not a series member")
    prepared = dicom.prepare_source(archive, tmp_path, "moving")
    assert prepared == {"moving": "moving.nii.gz", "moving_dicom": "moving_dicom"}
    assert not (tmp_path / ".moving_unpacked").exists()


# -- DICOM out ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two CT series of one study, shifted, registered with a tiny 3-D model and labels."""
    import sys

    from worker.inference.pipeline import register_files

    sys.path.insert(0, str(Path(__file__).parent / "service"))
    from support import make_models, write_nifti

    root = tmp_path_factory.mktemp("dicom_out")
    models = make_models(root / "models")
    study = pydicom.uid.generate_uid()
    fixed = ct_series(_volume(2), root / "fixed", study_uid=study, description="fixed")
    moving = ct_series(
        _volume(3), root / "moving", study_uid=study, origin=(-8.5, -12, 5), series_number=2
    )
    job = root / "job"
    job.mkdir()
    dicom.prepare(fixed, job, "fixed", "fixed")
    dicom.prepare(moving, job, "moving", "moving")
    for role, seed in (("fixed", 2), ("moving", 3)):
        labels = (blobs(SHAPE, seed=seed) > 0.5).astype(np.int16) * 3  # one label, value 3
        write_nifti(job / f"{role}_labels.nii.gz", labels, (1, 1, 2), np.int16)
    out = root / "out"
    register_files(
        job / "fixed.nii.gz",
        job / "moving.nii.gz",
        out,
        RegistrationOptions(model=str(models / "tiny-3d.pt")),
        device="cpu",
        fixed_labels=job / "fixed_labels.nii.gz",
        moving_labels=job / "moving_labels.nii.gz",
        dicom_series=(job / "fixed_dicom", job / "moving_dicom"),
    )
    return {"out": out, "fixed": root / "fixed", "moving": root / "moving"}


def dciodvfy_errors(path: Path) -> list[str]:
    binary = shutil.which("dciodvfy")
    assert binary is not None, "dciodvfy is not installed (apt-get install dicom3tools)"
    run = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    assert lines, "dciodvfy said nothing"
    return [line for line in lines if line.startswith("Error")]


def test_dicom_outputs_are_valid(registered: dict[str, Path], tmp_path: Path) -> None:
    out = registered["out"]
    for name in ("dicom_registration", "dicom_warped", "dicom_seg"):
        assert name in artifacts.present(out)
    assert dciodvfy_errors(out / artifacts.filename("dicom_registration")) == []
    assert dciodvfy_errors(out / artifacts.filename("dicom_seg")) == []
    with zipfile.ZipFile(out / artifacts.filename("dicom_warped")) as zf:
        zf.extractall(tmp_path)
    slices = sorted(tmp_path.glob("*.dcm"))
    assert len(slices) == SHAPE[2]
    for path in slices[:2]:
        assert dciodvfy_errors(path) == []


def test_objects_reference_both_series(registered: dict[str, Path]) -> None:
    out = registered["out"]
    fixed = pydicom.dcmread(sorted(registered["fixed"].glob("*.dcm"))[0])
    moving = pydicom.dcmread(sorted(registered["moving"].glob("*.dcm"))[0])
    reg = pydicom.dcmread(out / artifacts.filename("dicom_registration"))
    assert reg.SOPClassUID == dicom_export.DEFORMABLE_SPATIAL_REGISTRATION
    assert reg.FrameOfReferenceUID == fixed.FrameOfReferenceUID
    item = reg.DeformableRegistrationSequence[0]
    assert item.SourceFrameOfReferenceUID == moving.FrameOfReferenceUID
    assert len(item.ReferencedImageSequence) == SHAPE[2]
    referenced = {s.SeriesInstanceUID for s in reg.ReferencedSeriesSequence}
    assert referenced == {fixed.SeriesInstanceUID, moving.SeriesInstanceUID}
    warped = dicom_export.read_zip(out / artifacts.filename("dicom_warped"))
    first = warped[0]
    assert first.FrameOfReferenceUID == fixed.FrameOfReferenceUID
    assert first.StudyInstanceUID == moving.StudyInstanceUID
    assert first.PatientID == moving.PatientID
    assert first.SeriesInstanceUID not in (fixed.SeriesInstanceUID, moving.SeriesInstanceUID)
    seg = pydicom.dcmread(out / artifacts.filename("dicom_seg"))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert seg.SegmentSequence[0].SegmentLabel == "label 3"


def test_registration_grid_reproduces_the_warped_series(registered: dict[str, Path]) -> None:
    """Read as a reader of the standard would: the DSRO's grid (fixed point + vector = moving
    point) applied to the moving series as GDCM reads it, sampled on the warped series' grid,
    gives the warped series' values (up to their integer storage)."""
    out = registered["out"]
    field = dicom_export.field_from_registration(
        pydicom.dcmread(out / artifacts.filename("dicom_registration"))
    )
    nifti_field = sitk.ReadImage(str(out / artifacts.filename("displacement")))
    np.testing.assert_allclose(field.GetOrigin(), nifti_field.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(field.GetDirection(), nifti_field.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(  # the same vectors: displacement.nii.gz's, as float32
        sitk.GetArrayFromImage(field), sitk.GetArrayFromImage(nifti_field), atol=1e-5
    )
    moving = sitk.Cast(_gdcm(registered["moving"]), sitk.sitkFloat32)
    transform = sitk.DisplacementFieldTransform(sitk.Image(field))
    resampled = sitk.Resample(moving, field, transform, sitk.sitkLinear, 0.0)
    warped = dicom_export.warped_values(
        dicom_export.read_zip(out / artifacts.filename("dicom_warped"))
    )
    assert np.abs(sitk.GetArrayFromImage(resampled) - warped).max() <= 0.51
    displacement = sitk.GetArrayFromImage(field)
    assert np.abs(displacement).max() > 0.05  # a real deformation, not the identity


def test_riir_register_takes_a_folder_and_a_zip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 2-D case too: one slice per series gives a 2-D registration, and its DSRO a grid of
    one plane whose vectors have no through-plane component."""
    import sys

    from riir.cli import main

    sys.path.insert(0, str(Path(__file__).parent / "service"))
    from support import make_models

    models = make_models(tmp_path / "models")
    fixed = ct_series(np.round(blobs((48, 40, 1), seed=4) * 800), tmp_path / "fixed")
    moving = ct_series(np.round(blobs((48, 40, 1), seed=5) * 800), tmp_path / "moving")
    archive = zip_files(moving, tmp_path / "moving.zip")
    out = tmp_path / "out"
    argv = ["register", str(tmp_path / "fixed"), str(archive), "--out", str(out)]
    argv += ["--model", str(models / "tiny-2d.pt"), "--device", "cpu", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    reg = pydicom.dcmread(out / artifacts.filename("dicom_registration"))
    grid = reg.DeformableRegistrationSequence[0].DeformableRegistrationGridSequence[0]
    assert list(grid.GridDimensions) == [48, 40, 1]
    vectors = np.frombuffer(grid.VectorGridData, "<f4").reshape(-1, 3)
    assert np.all(vectors[:, 2] == 0) and np.abs(vectors[:, :2]).max() > 0
    assert dciodvfy_errors(out / artifacts.filename("dicom_registration")) == []
    warped = dicom_export.read_zip(out / artifacts.filename("dicom_warped"))
    assert len(warped) == 1 and warped[0].SOPInstanceUID != pydicom.dcmread(fixed[0]).SOPInstanceUID
    both = zip_files(fixed + moving, tmp_path / "both.zip", names=["a.dcm", "b.dcm"])
    argv[2] = str(both)
    assert main(argv) == 1
    assert "--moving-series-uid" in capsys.readouterr().err


def test_frames_of_one_plane_make_a_series(tmp_path: Path) -> None:
    """register-series' DICOM input: 2-D frames at one position, ordered by Instance Number."""
    import nibabel as nib

    movie = np.round(np.stack([blobs((32, 28), seed=s) * 500 for s in range(4)], axis=-1))
    files = ct_series(movie, tmp_path / "frames", frames=True)
    archive = zip_files(files, tmp_path / "frames.zip")
    assert dicom.prepare_frames(archive, tmp_path, "series") == {"series": "series.nii.gz"}
    image = nib.load(tmp_path / "series.nii.gz")
    assert image.shape == (32, 28, 1, 4)
    np.testing.assert_array_equal(np.asarray(image.dataobj)[:, :, 0, :], movie)
    stack = ct_series(_volume(0), tmp_path / "stack")
    with pytest.raises(InputError, match="2-D frames of one plane"):
        dicom.prepare_frames(zip_files(stack, tmp_path / "stack.zip"), tmp_path, "series")


def test_registration_grid_by_the_standards_equation(registered: dict[str, Path]) -> None:
    """Without ITK: PS3.3 C.20.3.1.1's equation on the DSRO's own attributes (grid point of the
    Registered RCS + vector = point of the Source RCS), the moving series' own Image Position /
    Orientation (Patient) to find that point's voxel, trilinear sampling of its pixel data:
    the warped series' value at that grid point."""
    from scipy.ndimage import map_coordinates

    out = registered["out"]
    reg = pydicom.dcmread(out / artifacts.filename("dicom_registration"))
    grid = reg.DeformableRegistrationSequence[0].DeformableRegistrationGridSequence[0]
    x_n, y_n, z_n = (int(v) for v in grid.GridDimensions)
    vectors = np.frombuffer(grid.VectorGridData, "<f4").reshape(z_n, y_n, x_n, 3)
    row, col = (
        np.asarray(grid.ImageOrientationPatient[:3]),
        np.asarray(grid.ImageOrientationPatient[3:]),
    )
    axes = np.stack([row, col, np.cross(row, col)], axis=1) * np.asarray(grid.GridResolution)
    k, j, i = np.meshgrid(*(np.arange(n) for n in (z_n, y_n, x_n)), indexing="ij")
    index = np.stack([i, j, k], axis=-1).reshape(-1, 3)
    source = np.asarray(grid.ImagePositionPatient) + index @ axes.T + vectors.reshape(-1, 3)

    moving = sorted(
        (pydicom.dcmread(p) for p in registered["moving"].glob("*.dcm")),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    m_row = np.asarray(moving[0].ImageOrientationPatient[:3], float)
    m_col = np.asarray(moving[0].ImageOrientationPatient[3:], float)
    m_normal = np.cross(m_row, m_col)
    gap = float(
        np.subtract(moving[1].ImagePositionPatient, moving[0].ImagePositionPatient) @ m_normal
    )
    r_spacing, c_spacing = (float(v) for v in moving[0].PixelSpacing)
    m_axes = np.stack([m_row * c_spacing, m_col * r_spacing, m_normal * gap], axis=1)
    voxel = np.linalg.solve(m_axes, (source - np.asarray(moving[0].ImagePositionPatient, float)).T)
    values = np.stack(
        [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in moving]
    )
    sampled = map_coordinates(values, voxel[::-1], order=1, mode="constant", cval=0.0)

    warped = dicom_export.warped_values(
        dicom_export.read_zip(out / artifacts.filename("dicom_warped"))
    ).reshape(-1)
    inside = np.all((voxel >= 0) & (voxel <= np.asarray(values.shape[::-1])[:, None] - 1), axis=0)
    assert inside.mean() > 0.5
    assert np.abs(sampled[inside] - warped[inside]).max() <= 0.51
