"""The initial alignment a registration starts from (``RegistrationOptions.init``).

- ``physical``: none; the headers' world coordinates are trusted.
- ``center``: the translation taking the fixed image's centre onto the moving image's.
- ``affine``: a 12 (3-D) or 6 (2-D) parameter affine transform found by SimpleITK's
  multi-resolution registration (Mattes mutual information, so it works across contrasts),
  started from the centre alignment. What VoxelMorph-style methods expect to be done first.

Each returns a transform from fixed-image points to moving-image points (None: identity); the
network registers the moving image resampled through it, and the final field composes the
two (``worker.inference.engine``).
"""

from __future__ import annotations

import SimpleITK as sitk

from conventions.grid import Grid, center_offset, translation

SEED = 1  # the metric's random samples (0 would mean the clock): one answer for one pair
# The affine's pyramid: image shrink factor and smoothing (mm) per level, coarse to fine. It
# stops at half the image's resolution: on real 1 mm brains (160x192x224) a last level at full
# resolution took 12 of a registration's 19 s and changed no Dice (the network works at 2 mm;
# the measurement: docs/method.md, section E). On images larger than BIN_SHRINK_VOXELS the
# finest level's shrink is done once, by averaging 2^D voxels (``sitk.BinShrink``), before the
# registration starts: its pyramid then smooths images an eighth the size (on those brains
# 1.3 s instead of 3.4 s, the Dice of the six validation pairs unchanged). Smaller images, the
# 2-mm IXI heads say, keep the exact pyramid: there it saved 0.4 s, and its answer moved as
# much as another random seed moves it.
SHRINK_FACTORS = (4, 2)
SMOOTHING_MM = (2.0, 1.0)
BIN_SHRINK_VOXELS = 4_000_000


def initial_transform(fixed: sitk.Image, moving: sitk.Image, init: str) -> sitk.Transform | None:
    if init == "physical":
        return None
    if init == "center":
        return translation(center_offset(fixed, moving))
    if init == "affine":
        return affine(fixed, moving)
    raise ValueError(f"unknown initial alignment {init!r}")


def affine(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """Affine transform (fixed point -> moving point) maximising Mattes MI, coarse to fine."""
    start = sitk.AffineTransform(fixed.GetDimension())
    start.SetCenter(tuple(float(v) for v in Grid.of(fixed).center()))
    start.SetTranslation(tuple(float(v) for v in center_offset(fixed, moving)))
    # The pyramid shrinks the fixed image (the points sampled); the moving one it only smooths.
    fixed, first = _averaged(sitk.Cast(fixed, sitk.sitkFloat32))
    moving, _ = _averaged(sitk.Cast(moving, sitk.sitkFloat32))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=100, relaxationFactor=0.6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([f // first for f in SHRINK_FACTORS])
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_MM))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(start, inPlace=False)
    found = method.Execute(fixed, moving)
    # Execute wraps the result in a composite of one; the affine itself is what we keep.
    if isinstance(found, sitk.CompositeTransform) and found.GetNumberOfTransforms() == 1:
        found = found.GetNthTransform(0)
    return found


def _averaged(image: sitk.Image) -> tuple[sitk.Image, int]:
    """``image`` averaged over bins of the finest level's shrink factor along each axis when
    it is larger than BIN_SHRINK_VOXELS, and the factor it was shrunk by (1: not at all)."""
    if image.GetNumberOfPixels() <= BIN_SHRINK_VOXELS:
        return image, 1
    factor = SHRINK_FACTORS[-1]
    return sitk.BinShrink(image, [min(factor, n) for n in image.GetSize()]), factor
