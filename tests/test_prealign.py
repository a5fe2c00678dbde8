import numpy as np
import SimpleITK as sitk

from worker.inference import prealign


def _displacement(transform: sitk.Transform, image: sitk.Image) -> np.ndarray:
    field = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        image.GetSize(),
        image.GetOrigin(),
        image.GetSpacing(),
        image.GetDirection(),
    )
    return sitk.GetArrayFromImage(field)


def test_large_images_are_averaged_first_and_the_affine_stays_the_same(monkeypatch):
    """Over BIN_SHRINK_VOXELS the finest level's shrink is done once by averaging: the affine
    found then agrees with the exact pyramid's to a tenth of a voxel, and both recover the
    scaling, shear and shift that made the moving image. (Texture everywhere: on blobs over
    a black background, mutual information prefers a shrunken overlap.)"""
    noise = np.random.default_rng(0).random((96, 96)).astype(np.float32)
    fixed = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(noise), 3.0)
    truth = sitk.AffineTransform(2)
    truth.SetMatrix((1.1, 0.04, -0.04, 1.1))
    truth.SetCenter((48.0, 48.0))
    truth.SetTranslation((2.0, -3.0))
    moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, 0.0)
    inside = (slice(16, -16), slice(16, -16))
    expected = _displacement(truth, fixed)[inside]  # fixed x lies at truth(x) in moving
    exact = _displacement(prealign.affine(fixed, moving), fixed)[inside]
    monkeypatch.setattr(prealign, "BIN_SHRINK_VOXELS", 96 * 96 - 1)
    shrunk, factor = prealign._averaged(fixed)
    assert shrunk.GetSize() == (48, 48) and factor == 2
    averaged = _displacement(prealign.affine(fixed, moving), fixed)[inside]
    assert np.abs(averaged - exact).max() < 0.1, np.abs(averaged - exact).max()
    for found in (exact, averaged):
        assert np.abs(found - expected).max() < 0.2, np.abs(found - expected).max()
