"""``from riir import register``: the Python API returns what ``riir register`` writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import blobs, shifted

import riir
from conventions.errors import InputError
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
    paths = []
    for name, array in (("fixed", fixed), ("moving", moving)):
        paths.append(str(tmp_path / f"{name}.nii.gz"))
        sitk.WriteImage(_image(array, spacing), paths[-1])
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
