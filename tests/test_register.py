"""The ``riir register`` code path against the artifact contract, on synthetic images with
non-trivial geometry (anisotropic spacing, rotated and flipped axes, offsets)."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conventions.grid import Grid
from model.networks.checkpoint import save_checkpoint
from model.networks.descent import Descent, DescentConfig
from model.networks.riir import RIIR, RIIRConfig
from riir.cli import main
from worker.inference import memory

CENTRES = [(-6.0, 4.0, 3.0), (7.0, -5.0, -4.0), (2.0, 8.0, -6.0), (-4.0, -7.0, 5.0)]


def rotation(dim: int, angle: float = 0.3) -> tuple[float, ...]:
    c, s = math.cos(angle), math.sin(angle)
    if dim == 2:
        return (c, -s, s, c)
    # a rotation about z composed with a flip of y: not LPS, not axis aligned
    return tuple(np.array([[c, s, 0], [s, -c, 0], [0, 0, 1.0]]).ravel())


def physical_image(size, spacing, origin, direction, shift=(0.0, 0.0, 0.0)) -> sitk.Image:
    """Gaussian blobs defined in physical space (mm), displaced by ``shift`` mm: the value at
    physical point y is f(y - shift), so fixed point x corresponds to moving point x + shift."""
    grid = Grid(tuple(size), tuple(spacing), tuple(origin), tuple(direction))
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1)
    points = np.asarray(origin) + index @ grid.index_to_physical.T - np.asarray(shift[: len(size)])
    values = np.zeros(size)
    for k, centre in enumerate(CENTRES):
        r2 = ((points - np.asarray(centre[: len(size)])) ** 2).sum(-1)
        values += (1 - 0.15 * k) * np.exp(-r2 / (2 * 4.0**2))
    image = sitk.GetImageFromArray(values.transpose().astype(np.float32))  # ITK -> numpy order
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def write(image: sitk.Image, path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("dim", [2, 3])
def test_field_to_voxel_inverts_voxel_to_field_on_an_oblique_grid(dim, dtype):
    # The metrics (Jacobian, preview) read the field back in voxels; an axis swapped or a
    # matrix transposed in that conversion would pass unnoticed on an axis-aligned grid.
    size, spacing = (7, 6, 5)[:dim], (1.2, 0.9, 1.1)[:dim]
    grid = Grid(size, spacing, (3.0, -2.0, 1.0)[:dim], rotation(dim))
    phi = np.random.default_rng(0).normal(0.0, 1.0, (dim, *grid.shape))
    back = grid.field_to_voxel(grid.voxel_to_field(phi), dtype)
    assert back.dtype == dtype and back.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(back, phi, atol=1e-12 if dtype == np.float64 else 1e-5)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for d in (2, 3):
        save_checkpoint(
            folder / f"descent{d}d.pt",
            Descent(DescentConfig(spatial_dims=d, iterations=400, step=1.0, sigma=3.0)),
            "descent",
            {"name": f"descent-{d}d", "version": "test"},
        )
        torch.manual_seed(0)
        riir = RIIR(RIIRConfig(spatial_dims=d, steps=3, hidden_channels=(8, 8), cell_stride=2))
        torch.nn.init.normal_(riir.cell.conv_out.weight, std=0.1)
        save_checkpoint(
            folder / f"riir{d}d.pt",
            riir,
            "riir",
            {"name": f"riir-{d}d", "version": "test", "preprocessing": {"shape_multiple": 2}},
        )
        paths[d] = {
            "descent": str(folder / f"descent{d}d.pt"),
            "riir": str(folder / f"riir{d}d.pt"),
        }
    return paths


GEOMETRIES = {
    "3d": dict(
        fixed=((30, 28, 24), (1.2, 0.9, 1.1), (-21.0, 7.0, -12.0), rotation(3)),
        moving=((26, 30, 22), (1.3, 1.0, 1.2), (-16.0, -14.0, -13.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
    ),
    "2d": dict(
        fixed=((40, 36), (0.9, 1.1), (-11.0, -24.0), rotation(2)),
        moving=((38, 40), (1.0, 1.0), (-19.0, -20.0), (1, 0, 0, 1)),
    ),
}


def _pair(tmp_path, kind: str, shift):
    g = GEOMETRIES[kind]
    fixed = physical_image(*g["fixed"])
    moving = physical_image(*g["moving"], shift=shift)
    return write(fixed, tmp_path / "fixed.nii.gz"), write(moving, tmp_path / "moving.nii.gz")


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _sitk_reproduces_warped(out, moving_path, fixed_path) -> float:
    """What an independent client does with the files as they are: SimpleITK reads the
    transform file, and the displacement field where ITK reads it in the image's dimension
    (all but a (H, W, 1) slice: ITK's NIfTI reader drops the singleton axis of vector
    images), and resamples the moving image. The worst correlation with warped.nii.gz."""
    fixed, moving, warped = (
        sitk.ReadImage(str(p)) for p in (fixed_path, moving_path, out / "warped.nii.gz")
    )
    transforms = [sitk.ReadTransform(str(out / "transform.h5"))]
    field = sitk.ReadImage(str(out / "displacement.nii.gz"))
    if field.GetDimension() == fixed.GetDimension():
        transforms.append(sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64)))
    return min(
        _correlation(
            sitk.GetArrayFromImage(sitk.Resample(moving, fixed, t, sitk.sitkLinear, 0.0)),
            sitk.GetArrayFromImage(warped),
        )
        for t in transforms
    )


def _ants_reproduces_warped(out, moving_path, fixed_path) -> float:
    """antsApplyTransforms (antspyx) with displacement.nii.gz, in the fixed image's
    dimension as ANTs reads it (3 for a (H, W, 1) slice)."""
    import ants

    fixed, moving = ants.image_read(str(fixed_path)), ants.image_read(str(moving_path))
    warped = ants.apply_transforms(
        fixed, moving, [str(out / "displacement.nii.gz")], interpolator="linear"
    )
    return _correlation(warped.numpy(), nib.load(out / "warped.nii.gz").get_fdata())


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_known_physical_shift_is_recovered_in_lps_millimetres(tmp_path, checkpoints, kind):
    d = 2 if kind == "2d" else 3
    shift = (2.0, -1.5, 1.0)[:d]
    fixed_path, moving_path = _pair(tmp_path, kind, shift)
    out = tmp_path / "out"
    assert (
        main(
            [
                "register",
                fixed_path,
                moving_path,
                "--out",
                str(out),
                "--quiet",
                "--model",
                checkpoints[d]["descent"],
            ]
        )
        == 0
    )

    field = sitk.ReadImage(str(out / "displacement.nii.gz"))
    fixed = sitk.ReadImage(fixed_path)
    # The contract: the field lives on the fixed grid exactly as SimpleITK reads the fixed image.
    assert field.GetSize() == fixed.GetSize()
    np.testing.assert_allclose(field.GetOrigin(), fixed.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(field.GetSpacing(), fixed.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(field.GetDirection(), fixed.GetDirection(), atol=1e-6)
    vectors = sitk.GetArrayFromImage(field)  # (*numpy shape, d), LPS mm
    centre = tuple(slice(n // 3, 2 * n // 3) for n in vectors.shape[:-1])
    np.testing.assert_allclose(vectors[centre].reshape(-1, d).mean(0), shift, atol=0.35)

    assert _sitk_reproduces_warped(out, moving_path, fixed_path) > 0.999
    report = json.loads((out / "metrics.json").read_text())
    assert report["similarity_after"]["ncc"] > report["similarity_before"]["ncc"] + 0.05
    assert report["similarity_after"]["ncc"] > 0.99

    # The inverse lives on the moving grid and carries moving points back: -shift.
    inverse = sitk.ReadImage(str(out / "inverse_displacement.nii.gz"))
    assert inverse.GetSize() == sitk.ReadImage(moving_path).GetSize()
    back = sitk.GetArrayFromImage(inverse)[centre].reshape(-1, d).mean(0)
    np.testing.assert_allclose(back, -vectors[centre].reshape(-1, d).mean(0), atol=0.05)
    consistency = report["inverse_consistency"]
    assert consistency["mean_mm"] < 0.05 and consistency["scored_percent"] > 50


@pytest.mark.parametrize("layout", ["(H,W)", "(H,W,1)", "3d"])
def test_displacement_file_is_the_itk_5d_vector_nifti(tmp_path, checkpoints, layout):
    rng = np.random.default_rng(0)
    shape = (20, 24, 1) if layout == "(H,W,1)" else (20, 24) if layout == "(H,W)" else (16,) * 3
    affine = np.diag([1.5, 0.8, 2.0, 1.0])
    for name, seed in (("fixed", 0), ("moving", 1)):
        data = rng.random(shape).astype(np.float32) if seed else np.zeros(shape, np.float32) + 1
        data[tuple(slice(4, 12) for _ in shape[:2])] += 2.0 + seed
        nib.save(nib.Nifti1Image(data, affine), tmp_path / f"{name}.nii.gz")
    out = tmp_path / "out"
    d = 3 if layout == "3d" else 2
    assert (
        main(
            [
                "register",
                str(tmp_path / "fixed.nii.gz"),
                str(tmp_path / "moving.nii.gz"),
                "--out",
                str(out),
                "--quiet",
                "--model",
                checkpoints[d]["riir"],
            ]
        )
        == 0
    )
    field = nib.load(out / "displacement.nii.gz")
    spatial = (tuple(shape) + (1,) * 3)[:3]
    components = 3 if layout == "(H,W,1)" else d  # the dimension ITK reads the fixed image in
    assert field.shape == (*spatial, 1, components)
    assert field.header["intent_code"] == 1007  # NIFTI_INTENT_VECTOR
    fixed_itk = sitk.ReadImage(str(tmp_path / "fixed.nii.gz"))
    field_itk = sitk.ReadImage(str(out / "displacement.nii.gz"))
    if layout == "(H,W,1)":  # the file keeps the input's full header
        np.testing.assert_allclose(
            field.affine, nib.load(tmp_path / "fixed.nii.gz").affine, atol=1e-5
        )
    else:  # the field's grid is the fixed grid as SimpleITK reads it
        assert field_itk.GetSize() == fixed_itk.GetSize()
        np.testing.assert_allclose(field_itk.GetOrigin(), fixed_itk.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(field_itk.GetSpacing(), fixed_itk.GetSpacing(), atol=1e-6)
    # One component per axis of the fixed image as ITK reads it (3 for a (H, W, 1) slice,
    # whose singleton axis ITK's reader drops from vector images: transform.h5 keeps it).
    assert field_itk.GetNumberOfComponentsPerPixel() == fixed_itk.GetDimension()
    assert sitk.ReadTransform(str(out / "transform.h5")).GetDimension() == fixed_itk.GetDimension()
    assert np.abs(field.get_fdata()).max() > 0.01  # the random model did move something
    assert (
        _sitk_reproduces_warped(
            out, str(tmp_path / "moving.nii.gz"), str(tmp_path / "fixed.nii.gz")
        )
        > 0.999
    )
    pair = (out, tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz")
    assert _ants_reproduces_warped(*pair) > 0.999
    for name in ("warped.nii.gz", "jacobian.nii.gz"):  # in the fixed image's own layout
        np.testing.assert_allclose(nib.load(out / name).affine, field.affine, atol=1e-5)
        assert nib.load(out / name).shape == tuple(shape)
    assert (out / "preview.png").stat().st_size > 1000


def test_labels_are_warped_and_scored(tmp_path, checkpoints):
    shift = (2.0, -1.5)
    fixed_path, moving_path = _pair(tmp_path, "2d", shift)
    for name, path in (("fixed", fixed_path), ("moving", moving_path)):
        image = sitk.ReadImage(path)
        labels = sitk.Cast(image > 0.5, sitk.sitkUInt8) + sitk.Cast(image > 0.8, sitk.sitkUInt8)
        write(labels, tmp_path / f"{name}_labels.nii.gz")
    out = tmp_path / "out"
    assert (
        main(
            [
                "register",
                fixed_path,
                moving_path,
                "--out",
                str(out),
                "--quiet",
                "--model",
                checkpoints[2]["descent"],
                "--fixed-labels",
                str(tmp_path / "fixed_labels.nii.gz"),
                "--moving-labels",
                str(tmp_path / "moving_labels.nii.gz"),
            ]
        )
        == 0
    )
    report = json.loads((out / "metrics.json").read_text())["labels"]
    assert set(report["after"]["dice"]) == {"1", "2"}
    assert report["after"]["dice_mean"] > report["before"]["dice_mean"] + 0.05
    warped = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped_labels.nii.gz")))
    assert set(np.unique(warped)) <= {0, 1, 2}


def test_series_registers_every_frame_to_the_template(tmp_path, checkpoints):
    g = GEOMETRIES["2d"]["fixed"]
    shifts = [(1.5, 0.0), (-1.0, 1.0), (0.0, 0.0)]
    frames = [sitk.JoinSeries(physical_image(*g, shift=s)) for s in shifts]  # (X, Y, 1)
    series = sitk.JoinSeries(frames)  # (X, Y, 1, 3)
    path = write(series, tmp_path / "series.nii.gz")
    out = tmp_path / "out"
    assert (
        main(
            [
                "register-series",
                path,
                "--out",
                str(out),
                "--quiet",
                "--model",
                checkpoints[2]["descent"],
            ]
        )
        == 0
    )
    warped = nib.load(out / "warped.nii.gz")
    assert warped.shape == nib.load(path).shape
    assert sorted(p.name for p in (out / "displacements").iterdir()) == [
        "frame_000.nii.gz",
        "frame_001.nii.gz",
        "frame_002.nii.gz",
    ]
    template_field = sitk.GetArrayFromImage(
        sitk.ReadImage(str(out / "displacements" / "frame_002.nii.gz"))
    )
    assert np.count_nonzero(template_field) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["template"] == 2 and report["frames"] == 3
    assert report["pca_after"]["d_pca1"] < 0.5 * report["pca_before"]["d_pca1"]


def test_a_series_gets_the_series_model_by_default(tmp_path, monkeypatch):
    # qMRI frames change contrast, so 2-D series default to qmri-2d and pairs to cardiac-2d.
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("cardiac-2d", "qmri-2d"):
        save_checkpoint(
            weights / f"{name}.pt",
            Descent(DescentConfig(spatial_dims=2, iterations=2, step=1.0, sigma=3.0)),
            "descent",
            {"name": name, "version": "test"},
        )
        (weights / f"{name}.json").write_text(json.dumps({"name": name, "spatial_dims": 2}))
    monkeypatch.setenv("RIIR_MODELS_DIR", str(weights))
    g = GEOMETRIES["2d"]["fixed"]
    frames = [physical_image(*g, shift=s) for s in ((1.0, 0.0), (0.0, 0.0))]
    series = write(sitk.JoinSeries([sitk.JoinSeries(f) for f in frames]), tmp_path / "s.nii.gz")
    pair = [write(f, tmp_path / f"{k}.nii.gz") for k, f in enumerate(frames)]
    assert main(["register-series", series, "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["register", *pair, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    used = [
        json.loads((tmp_path / d / "metrics.json").read_text())["model"]["name"] for d in ("a", "b")
    ]
    assert used == ["qmri-2d", "cardiac-2d"]


def _fails_with(capsys, argv, message):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_inputs_fail_with_one_line(tmp_path, checkpoints, capsys):
    good = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(good, np.eye(4)), tmp_path / "good.nii.gz")
    good2d = tmp_path / "good2d.nii.gz"
    nib.save(nib.Nifti1Image(good[:, :, 0], np.eye(4)), good2d)
    nan = good.copy()
    nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "nan.nii.gz")
    blob = (tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "random.nii.gz").write_bytes(np.random.default_rng(1).bytes(4000))
    (tmp_path / "empty.nii").write_bytes(b"")
    header = nib.Nifti1Header()  # a header that lies about its size: 4096³ voxels, 4 kB file
    header.set_data_shape((4096, 4096, 4096))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    (tmp_path / "huge.nii").write_bytes(header.binaryblock + bytes(4 + 4096))
    header.set_data_shape((32, 32, 32))  # smaller, so the size check passes: truncated
    (tmp_path / "short.nii").write_bytes(header.binaryblock + bytes(4 + 4096))
    one = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((1, 1, 1), np.float32), np.eye(4)), one)
    nib.save(
        nib.Nifti1Image(good[..., None, None].repeat(2, 3).repeat(3, 4), np.eye(4)),
        tmp_path / "five.nii.gz",
    )
    nib.save(nib.Nifti1Image(good, np.diag([1e4, 1, 1, 1])), tmp_path / "spacing.nii.gz")
    nib.save(
        nib.Nifti1Image(np.zeros((16, 16, 16), np.complex64), np.eye(4)),
        tmp_path / "complex.nii.gz",
    )
    out, good_path, model = str(tmp_path / "out"), str(tmp_path / "good.nii.gz"), checkpoints[3]
    base = ["register", "--out", out, "--quiet", "--model", model["riir"]]
    cases = [
        ("missing.nii.gz", "file not found"),
        ("truncated.nii.gz", "truncated or corrupt"),
        ("random.nii.gz", "not a readable NIfTI"),
        ("empty.nii", "file is empty"),
        ("nan.nii.gz", "NaN or infinite"),
        ("huge.nii", "more than"),
        ("short.nii", "truncated"),
        ("one.nii.gz", "fewer than two axes"),
        ("five.nii.gz", "expected a 2-D (H, W), (H, W, 1) or 3-D image"),
        ("spacing.nii.gz", "voxel spacing"),
        ("complex.nii.gz", "not a scalar number type"),
    ]
    for name, message in cases:
        _fails_with(capsys, [*base, good_path, str(tmp_path / name)], message)
    _fails_with(capsys, [*base, good_path, str(good2d)], "mismatched dimensionality")
    _fails_with(
        capsys,
        ["register", good_path, good_path, "--out", out, "--quiet", "--model", "no-such-model"],
        "unknown model 'no-such-model'",
    )
    _fails_with(
        capsys,
        [
            "register",
            good_path,
            good_path,
            "--out",
            out,
            "--quiet",
            "--model",
            checkpoints[2]["riir"],
        ],
        "registers 2-D images",
    )
    _fails_with(capsys, [*base, good_path, good_path, "--steps", "500"], "steps must be")
    assert not (tmp_path / "out" / "displacement.nii.gz").exists()


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def test_the_command_line_keeps_freed_memory_for_the_next_registration(monkeypatch):
    """``riir``'s process keeps what it frees for reuse (``worker.inference.memory``): on
    glibc, as on CI's Debian, a freed 24 MB array (a field on a 1-mm brain is bigger) stays
    with the process instead of going back to the kernel, so the next one is not paged in
    afresh. ``RIIR_KEEP_FREED_MEMORY=0`` declines the setting."""
    monkeypatch.setenv(memory.ENVIRONMENT, "0")
    assert not memory.keep_freed_memory()
    monkeypatch.delenv(memory.ENVIRONMENT)
    assert memory.keep_freed_memory()
    mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c")).mallinfo2
    mallinfo2.restype = _Mallinfo2
    array = np.ones(6 * 2**20, np.float32)
    assert mallinfo2().hblkhd < array.nbytes  # on the heap, not in a mapping of its own
    del array
    assert mallinfo2().fordblks >= 6 * 2**20 * 4  # freed, and still the process's
