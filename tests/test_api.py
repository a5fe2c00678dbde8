"""``from riir import register``: the Python API returns what ``riir register`` writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import blobs, shifted

import riir
from conventions.errors import InputError, ModelNotFoundError
from model.networks.checkpoint import save_checkpoint
from model.networks.descent import Descent, DescentConfig
from riir.cli import main


@pytest.fixture(scope="module")
def descent(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("models") / "descent2d.pt"
    model = Descent(DescentConfig(spatial_dims=2, iterations=300, step=1.0, sigma=3.0))
    save_checkpoint(path, model, "descent", {"name": "descent-2d", "version": "test"})
    return str(path)


def _pair(shift=(1.5, -2.0)):
    fixed = blobs((40, 44), seed=3)
    return fixed, shifted(fixed, shift)


def test_arrays_with_spacing_register_like_the_command_line(tmp_path, descent):
    fixed, moving = _pair()
    spacing = (1.2, 0.8)  # per array axis (y, x)
    result = riir.register(fixed, moving, spacing=spacing, model=descent, device="cpu")
    assert result.warped.GetSpacing() == pytest.approx(spacing[::-1])
    assert result.metrics["similarity_after"]["ncc"] > result.metrics["similarity_before"]["ncc"]
    # moving(y) = fixed(y + shift): fixed point x is moving point x - shift, in mm and in
    # ITK's (x, y) order: (2 * 0.8, -1.5 * 1.2).
    vectors = sitk.GetArrayFromImage(result.displacement)[12:28, 12:32].reshape(-1, 2)
    np.testing.assert_allclose(vectors.mean(0), (2.0 * 0.8, -1.5 * 1.2), atol=0.3)
    assert (
        np.corrcoef(
            sitk.GetArrayFromImage(
                sitk.Resample(_image(moving, spacing), result.warped, result.transform)
            ).ravel(),
            sitk.GetArrayFromImage(result.warped).ravel(),
        )[0, 1]
        > 0.999
    )

    # The same pair from files through the CLI gives the same answer, file for file.
    paths = _pair_files(tmp_path, fixed, moving, spacing)
    out = tmp_path / "cli"
    assert main(["register", *paths, "--out", str(out), "--model", descent, "--quiet"]) == 0
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(sitk.ReadImage(str(out / "displacement.nii.gz"))),
        sitk.GetArrayFromImage(result.displacement),
        atol=1e-5,
    )
    saved = result.save(tmp_path / "saved")
    assert (
        json.loads((saved / "metrics.json").read_text())["jacobian"] == (result.metrics["jacobian"])
    )
    assert (saved / "inverse_displacement.nii.gz").is_file()


def _image(array: np.ndarray, spacing) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing[::-1])
    return image


def _pair_files(folder, fixed: np.ndarray, moving: np.ndarray, spacing) -> list[str]:
    """The pair as fixed.nii.gz and moving.nii.gz in ``folder``, for the command line."""
    paths = []
    for name, array in (("fixed", fixed), ("moving", moving)):
        paths.append(str(folder / f"{name}.nii.gz"))
        sitk.WriteImage(_image(array, spacing), paths[-1])
    return paths


def test_simpleitk_images_and_labels_and_bad_input(tmp_path, descent):
    fixed, moving = _pair()
    labels = [sitk.Cast(_image(a, (1, 1)) > 0.5, sitk.sitkUInt8) for a in (fixed, moving)]
    result = riir.register(
        _image(fixed, (1, 1)),
        _image(moving, (1, 1)),
        fixed_labels=labels[0],
        moving_labels=labels[1],
        model=descent,
        out=tmp_path / "out",
        device="cpu",
    )
    assert (
        result.folder == tmp_path / "out" and (tmp_path / "out" / "warped_labels.nii.gz").is_file()
    )
    dice = result.metrics["labels"]
    assert dice["after"]["dice_mean"] > dice["before"]["dice_mean"]
    assert result.warped_labels.GetSize() == result.warped.GetSize()
    with pytest.raises(InputError, match="steps must be"):
        riir.register(fixed, moving, steps=0)
    with pytest.raises(InputError, match="spacing"):
        riir.register(fixed, moving, spacing=(1.0, 1.0, 1.0), model=descent)


@pytest.mark.parametrize("interpolation", ["linear", "bspline", "sinc"])
def test_the_warped_image_is_resampled_with_the_interpolation_asked(
    tmp_path, descent, interpolation
):
    """``interpolation`` resamples the warped image as a client would with the same
    interpolator through ``transform.h5``; linear interpolation at a half-voxel shift averages
    neighbours and so smooths noise, which B-spline and sinc keep (why qMRI sites ask for
    them). Labels stay nearest-neighbour."""
    from conventions.grid import INTERPOLATORS

    fixed, moving = _pair()
    noisy = moving + np.random.default_rng(1).normal(0, 0.05, moving.shape).astype(np.float32)
    labels = [sitk.Cast(_image(a, (1, 1)) > 0.5, sitk.sitkUInt8) for a in (fixed, moving)]
    result = riir.register(
        fixed,
        noisy,
        fixed_labels=labels[0],
        moving_labels=labels[1],
        spacing=(1, 1),
        model=descent,
        interpolation=None if interpolation == "linear" else interpolation,  # linear: default
        device="cpu",
    )
    assert result.metrics["interpolation"] == interpolation
    client = sitk.Resample(
        _image(noisy, (1, 1)), result.warped, result.transform, INTERPOLATORS[interpolation], 0.0
    )
    warped = sitk.GetArrayFromImage(result.warped)
    np.testing.assert_allclose(warped, sitk.GetArrayFromImage(client), atol=1e-5)
    assert set(np.unique(sitk.GetArrayFromImage(result.warped_labels))) <= {0, 1}
    # Noise left in the middle (the step between rows, across the half-voxel shift), against
    # the moving image's: linear keeps about 0.71 of it, B-spline 0.89, sinc 0.94.
    step = np.diff(warped[10:30, 10:34], axis=0).std()
    kept = step / np.diff(noisy[10:30, 10:34], axis=0).std()
    assert (kept < 0.8) if interpolation == "linear" else (kept > 0.85), kept


def test_the_similarity_before_is_measured_with_the_interpolation_asked(descent):
    """``similarity_before`` compares the fixed image with the moving one as it stood before
    registration, resampled the way the warped one is: otherwise linear smoothing of a noisy
    moving image half a voxel off the fixed grid flatters "before" under sinc alone."""
    fixed, moving = _pair()
    noisy = _image(
        moving + np.random.default_rng(2).normal(0, 0.2, moving.shape).astype(np.float32), (1, 1)
    )
    noisy.SetOrigin((0.5, 0.5))  # every sample of the fixed grid falls between moving voxels
    before = {
        interpolation: riir.register(
            _image(fixed, (1, 1)), noisy, model=descent, interpolation=interpolation, device="cpu"
        ).metrics["similarity_before"]["ncc"]
        for interpolation in ("linear", "sinc")
    }
    assert before["linear"] > before["sinc"] + 0.01, before


def test_an_unknown_interpolation_is_refused_with_the_choices(tmp_path, descent):
    fixed, moving = _pair()
    with pytest.raises(InputError, match="interpolation must be 'linear', 'bspline' or 'sinc'"):
        riir.register(fixed, moving, spacing=(1, 1), model=descent, interpolation="cubic")
    out = tmp_path / "cli"
    paths = _pair_files(tmp_path, fixed, moving, (1, 1))
    command = ["register", *paths, "--out", str(out), "--model", descent, "--quiet"]
    assert main([*command, "--interpolation", "sinc"]) == 0
    assert json.loads((out / "metrics.json").read_text())["interpolation"] == "sinc"


def test_affine_initial_alignment_recovers_a_scaling_and_composes_with_the_network(
    tmp_path,
):
    """A moving image scaled by 1.2 about a shifted centre: ``init="affine"`` aligns it better
    than the centres' translation, and with a network that does not move (descent with step
    0) the field is the affine transform's own displacement exactly."""
    import SimpleITK as sitk

    from worker.inference.prealign import affine

    still = tmp_path / "still.pt"
    model = Descent(DescentConfig(spatial_dims=2, iterations=1, step=0.0, sigma=0.0))
    save_checkpoint(still, model, "descent", {"name": "still", "version": "test"})
    fixed = _image(blobs((64, 64), seed=5, count=6), (1, 1))
    truth = sitk.AffineTransform(2)
    truth.SetMatrix((1.2, 0.05, -0.05, 1.2))
    truth.SetCenter((32.0, 32.0))
    truth.SetTranslation((2.0, -3.0))
    moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)
    ncc = {}
    for init in ("center", "affine"):
        result = riir.register(fixed, moving, model=str(still), init=init, device="cpu")
        ncc[init] = result.metrics["similarity_before"]["ncc"]  # after the alignment alone
    assert ncc["affine"] > ncc["center"] + 0.02, ncc
    found = affine(fixed, moving)  # the same pair, the same seed: the same transform
    expected = sitk.TransformToDisplacementField(
        found,
        sitk.sitkVectorFloat64,
        fixed.GetSize(),
        fixed.GetOrigin(),
        fixed.GetSpacing(),
        fixed.GetDirection(),
    )
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(result.displacement), sitk.GetArrayFromImage(expected), atol=1e-3
    )


def test_the_initial_alignment_defaults_to_the_models_own(tmp_path, descent):
    """A model card may name the alignment it was measured best with (brain-3d: affine); a
    request that names one wins."""
    chosen = tmp_path / "affine-first.pt"
    model = Descent(DescentConfig(spatial_dims=2, iterations=10, step=1.0, sigma=3.0))
    meta = {"name": "affine-first", "version": "test", "preprocessing": {"init": "affine"}}
    save_checkpoint(chosen, model, "descent", meta)
    fixed, moving = _pair()
    assert riir.register(fixed, moving, model=str(chosen)).metrics["init"] == "affine"
    asked = riir.register(fixed, moving, model=str(chosen), init="center")
    assert asked.metrics["init"] == "center"
    assert riir.register(fixed, moving, model=descent).metrics["init"] == "physical"


def test_refinement_moves_a_still_network_onto_the_pair_and_reports_its_cost(tmp_path, capsys):
    """``refine`` steps start from the network's field: after a network that does not move
    they alone register a shifted pair; the report gives their count and seconds, progress
    counts them after the network's steps, and the model's card may set a default."""
    still = tmp_path / "still.pt"
    model = Descent(DescentConfig(spatial_dims=2, iterations=1, step=0.0, sigma=0.0))
    meta = {"name": "still", "version": "test", "preprocessing": {"refine": 3}}
    save_checkpoint(still, model, "descent", meta)
    fixed = blobs((48, 48), seed=5, count=6)
    moving = shifted(fixed, (1.5, -2.0))
    none = riir.register(fixed, moving, model=str(still), refine=0, device="cpu")
    assert none.metrics["refine"] == 0 and "refine" not in none.metrics["seconds"]
    assert np.abs(sitk.GetArrayFromImage(none.displacement)).max() == 0
    seen = []
    out = tmp_path / "refined"
    written = []  # whether metrics.json, the last artifact, existed at each report
    refined = riir.register(
        fixed,
        moving,
        model=str(still),
        refine=40,
        device="cpu",
        out=out,
        progress=lambda *a: seen.append(a) or written.append((out / "metrics.json").exists()),
    )
    assert refined.metrics["refine"] == 40 and refined.metrics["seconds"]["refine"] > 0
    # 40 refinement steps after the model's one, then resampling, the inverse, the artifacts:
    # done reaches total only once everything is written.
    assert seen[0] == (1, 44) and seen[40] == (41, 44) and seen[-1] == (44, 44)
    assert [done for done, _ in seen] == list(range(1, 45))
    assert written == [False] * 43 + [True]
    before, after = refined.metrics["similarity_before"], refined.metrics["similarity_after"]
    assert after["ncc"] > before["ncc"] + 0.02, (before, after)
    # The mean displacement in the middle points along the shift (x: +2 px, y: -1.5 px).
    vectors = sitk.GetArrayFromImage(refined.displacement)[14:34, 14:34].reshape(-1, 2)
    assert vectors.mean(0)[0] > 0.5 and vectors.mean(0)[1] < -0.3, vectors.mean(0)
    assert riir.register(fixed, moving, model=str(still), device="cpu").metrics["refine"] == 3
    with pytest.raises(InputError, match="refine"):
        riir.register(fixed, moving, model=str(still), refine=-1)
    # The model's own refinement settings apply over the request's: a stiff correction
    # (λ 10⁴ on it) leaves the shift mostly unregistered.
    stiff = tmp_path / "stiff.pt"
    meta["preprocessing"] = {"refine": 40, "refine_settings": {"lam": 1e4}}
    save_checkpoint(stiff, model, "descent", meta)
    held = sitk.GetArrayFromImage(riir.register(fixed, moving, model=str(stiff)).displacement)
    assert np.abs(held[14:34, 14:34]).mean() < 0.3 * np.abs(vectors).mean()
    # A model file whose refinement could not run is refused when it loads, whatever the
    # request asks (even no refinement), naming what is wrong.
    for preprocessing, wrong in (
        ({"refine": 2, "refine_settings": {"lamda": 1.0}}, "lamda"),
        ({"refine": 2, "refine_settings": {"similarity": "nmi", "stride": 0}}, "stride must"),
        ({"refine": -2}, "refine must"),
        ({"refine": 2, "refine_settings": ["lam"]}, "refinement settings"),
    ):
        meta["preprocessing"] = preprocessing
        save_checkpoint(stiff, model, "descent", meta)
        with pytest.raises(ModelNotFoundError, match=wrong):
            riir.register(fixed, moving, model=str(stiff), refine=0)
    paths = _pair_files(tmp_path, fixed, moving, (1, 1))
    argv = ["register", *paths, "--out", str(tmp_path / "cli"), "--model", str(still)]
    assert main([*argv, "--refine", "5", "--device", "cpu", "--quiet"]) == 0
    assert "test-time refinement: 5 steps" in capsys.readouterr().out


def test_refinement_on_the_fixed_grid_registers_below_the_models_grid(tmp_path, capsys):
    """``refine_native`` steps run on the fixed image's own grid after the model's (here
    2 mm on a 1-mm pair, where a network that does not move leaves only the initial
    alignment), in that grid's voxels, after the initial alignment, which the field still
    holds; the report gives their count and seconds, progress counts them, the inverse (solved
    on the model's coarser grid) stays consistent with the field, and the model's card may set
    a default, with settings of its own, for scans finer than its grid."""
    still = tmp_path / "still-2mm.pt"
    model = Descent(DescentConfig(spatial_dims=2, iterations=1, step=0.0, sigma=0.0))
    meta = {"name": "still", "version": "test", "preprocessing": {"spacing_mm": 2.0}}
    save_checkpoint(still, model, "descent", meta)
    fixed = _image(blobs((48, 48), seed=5, count=6), (1, 1))
    # The moving image's header puts it 5 mm along x; its content is shifted as well.
    moving = _image(shifted(sitk.GetArrayFromImage(fixed), (1.5, -2.0)), (1, 1))
    moving.SetOrigin((5.0, 0.0))
    options = dict(model=str(still), init="center", device="cpu")
    plain = riir.register(fixed, moving, **options)
    assert plain.metrics["refine_native"] == 0 and "refine_native" not in plain.metrics["seconds"]
    np.testing.assert_allclose(sitk.GetArrayFromImage(plain.displacement)[..., 0], 5.0, atol=1e-4)
    seen = []
    native = riir.register(
        fixed, moving, **options, refine_native=40, progress=lambda *a: seen.append(a)
    )
    assert native.metrics["refine_native"] == 40 and native.metrics["seconds"]["refine_native"] > 0
    # The network's step, the 40 on the fixed grid, the resampling, the inverse, the artifacts.
    assert [done for done, _ in seen] == list(range(1, 45)) and seen[-1] == (44, 44)
    before, after = native.metrics["similarity_before"], native.metrics["similarity_after"]
    assert after["ncc"] > before["ncc"] + 0.02, (before, after)
    # In the middle the field holds the header's 5 mm and the content's shift (x +2, y -1.5).
    vectors = sitk.GetArrayFromImage(native.displacement)[14:34, 14:34].reshape(-1, 2)
    assert vectors.mean(0)[0] > 5.5 and vectors.mean(0)[1] < -0.3, vectors.mean(0)
    assert native.metrics["inverse_consistency"]["mean_mm"] < 0.05
    meta["preprocessing"] = {"spacing_mm": 2.0, "refine_native": 2}
    save_checkpoint(still, model, "descent", meta)
    assert riir.register(fixed, moving, **options).metrics["refine_native"] == 2
    # The model's default runs only where the scan is finer than its grid: on a 2-mm scan,
    # its working grid, there is nothing finer to refine on, though a request still may.
    coarse = [_image(sitk.GetArrayFromImage(image)[::2, ::2], (2, 2)) for image in (fixed, moving)]
    coarse[1].SetOrigin((5.0, 0.0))
    assert riir.register(*coarse, **options).metrics["refine_native"] == 0
    assert riir.register(*coarse, **options, refine_native=2).metrics["refine_native"] == 2
    # Its own settings for those steps go over its refinement's, in its grid's voxels: an
    # Adam step of almost nothing leaves the field where the model's grid left it.
    meta["preprocessing"] |= {"refine_native_settings": {"lr": 1e-9}}
    save_checkpoint(still, model, "descent", meta)
    held = riir.register(fixed, moving, **options)
    assert held.metrics["refine_native"] == 2
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(held.displacement),
        sitk.GetArrayFromImage(plain.displacement),
        atol=1e-4,
    )
    for settings, wrong in (({"lamda": 1.0}, "lamda"), (["lr"], "must be a mapping")):
        meta["preprocessing"] = {"spacing_mm": 2.0, "refine_native_settings": settings}
        save_checkpoint(still, model, "descent", meta)
        with pytest.raises(ModelNotFoundError, match=wrong):
            riir.register(fixed, moving, **options, refine_native=0)
    with pytest.raises(InputError, match="refine_native must be less than or equal to 50"):
        riir.register(fixed, moving, **options, refine_native=51)
    meta["preprocessing"] = {"refine_native": 1.5}
    save_checkpoint(still, model, "descent", meta)
    with pytest.raises(ModelNotFoundError, match="refine_native must be a whole number"):
        riir.register(fixed, moving, **options)
    meta["preprocessing"] = {"spacing_mm": 2.0}
    save_checkpoint(still, model, "descent", meta)
    paths = [str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nii.gz")]
    sitk.WriteImage(fixed, paths[0])
    sitk.WriteImage(moving, paths[1])
    argv = ["register", *paths, "--out", str(tmp_path / "cli"), "--model", str(still)]
    assert main([*argv, "--refine-native", "3", "--device", "cpu", "--quiet"]) == 0
    assert "refinement on the fixed image's grid: 3 steps" in capsys.readouterr().out


def test_a_similarity_is_refused_by_a_model_that_has_none_to_choose(tmp_path):
    """The coarse-to-fine model always follows its trained MSE and features: asking it for
    NCC is an input error, not a silently different registration."""
    from model.networks.c2f import C2FRIIR, C2FConfig

    path = tmp_path / "c2f.pt"
    model = C2FRIIR(C2FConfig(spatial_dims=2, hidden_channels=(4, 4), level_steps=(1, 1)))
    save_checkpoint(path, model, "c2f", {"name": "tiny-c2f", "version": "test"})
    fixed, moving = _pair()
    assert riir.register(fixed, moving, model=str(path), device="cpu").metrics["steps"] == 2
    with pytest.raises(InputError, match="no similarity to choose"):
        riir.register(fixed, moving, model=str(path), similarity="ncc", device="cpu")
