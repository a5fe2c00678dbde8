"""The inverse field (``worker.inference.inverse``), found on the model's coarser grid."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from conventions.grid import Grid
from worker.inference.inverse import MAX_ERROR_MM, invert


def _smooth_field(size: tuple[int, ...], spacing: float) -> sitk.Image:
    """A smooth displacement (mm) of up to 1.5 mm over a 46 mm cube, on the given lattice."""
    points = np.stack(
        np.meshgrid(*[np.arange(n) * spacing for n in size[::-1]], indexing="ij"), axis=-1
    )  # numpy order (z, y, x), each point's (z, y, x) in mm
    wave = np.sin(points * 2 * np.pi / 46.0)
    vectors = 1.5 * np.stack([wave[..., 1], wave[..., 2], wave[..., 0]], axis=-1)  # ITK x, y, z
    field = sitk.GetImageFromArray(vectors, isVector=True)
    field.SetSpacing((spacing,) * 3)
    return field


def test_the_inverse_found_on_the_coarse_grid_is_the_full_grids():
    """A field made on a 2 mm grid and interpolated onto the 1 mm one, as the engine makes it:
    inverting the 2 mm one (an eighth of the voxels) gives the inverse of the 1 mm one, on the
    moving grid, with the inverse-consistency error scored on the 1 mm grid."""
    coarse = _smooth_field((24, 24, 24), 2.0)
    fine_grid = Grid((47, 47, 47), (1.0,) * 3, (0.0,) * 3, tuple(np.eye(3).flatten()))
    fine = fine_grid.resample(coarse)
    moving = sitk.Image([47, 47, 47], sitk.sitkFloat32)

    direct = invert(fine, moving)
    solved = invert(fine, moving, solved_on=coarse)

    inner = (slice(6, -6),) * 3
    a, b = (sitk.GetArrayFromImage(i.field)[inner] for i in (direct, solved))
    assert np.abs(a).max() > 1.0  # the inverse is not trivial
    np.testing.assert_allclose(b, a, atol=0.05)
    # Interpolating the inverse between 2 mm nodes costs a little consistency (0.012 mm ->
    # 0.027 mm here), well inside ITK's tolerance (``MAX_ERROR_MM``).
    assert solved.consistency["mean_mm"] < direct.consistency["mean_mm"] + 0.02
    assert solved.consistency["mean_mm"] < MAX_ERROR_MM / 2, solved.consistency
    assert solved.consistency["scored_percent"] > 80
    # A lattice finer than the field's own is not worth inverting on: the field's is used.
    small = sitk.Image([24, 24, 24], sitk.sitkFloat32)
    small.SetSpacing((2.0,) * 3)
    finer, own = invert(coarse, small, solved_on=fine), invert(coarse, small)
    np.testing.assert_array_equal(*(sitk.GetArrayFromImage(i.field) for i in (finer, own)))
