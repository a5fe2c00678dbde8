"""Hand-computed checks of the evaluation metrics in ``model.networks.metrics`` (tiny arrays
only)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model.networks.metrics import (
    dice,
    end_point_error,
    hausdorff95,
    jacobian_determinant,
    jacobian_stats,
    label_overlap_report,
    mse,
    ncc,
    nmi,
    pca_groupwise,
    rmse,
)

SHAPES = [(9, 11), (7, 8, 6)]


def smooth_image(shape: tuple[int, ...]) -> np.ndarray:
    """A non-constant, non-linear test image (a product of sines plus a ramp)."""
    grids = np.meshgrid(*[np.linspace(0.0, 1.0, n) for n in shape], indexing="ij")
    return np.prod([np.sin(2.0 + 3.0 * g) for g in grids], axis=0) + 0.3 * grids[0]


def box(shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
    """Integer mask with ones on [lo, hi) along every axis."""
    mask = np.zeros(shape, dtype=np.int32)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = 1
    return mask


# --- Dice -----------------------------------------------------------------------------------


def test_dice_of_overlapping_segments():
    a = np.zeros((6, 10), dtype=np.int32)
    b = np.zeros_like(a)
    a[2, 1:6] = 1  # 5 voxels
    b[2, 3:9] = 1  # 6 voxels, columns 3..5 shared with a -> 3 voxels overlap
    assert dice(a, b) == {1: pytest.approx(2 * 3 / (5 + 6))}


def test_dice_per_label_and_missing_labels():
    a = np.array([[1, 1, 2, 2], [0, 0, 3, 0]])
    b = np.array([[1, 0, 2, 2], [0, 0, 0, 4]])
    scores = dice(a, b)
    # Label 1: |A|=2, |B|=1, overlap 1 -> 2/3; label 2 identical; 3 and 4 in one map only.
    assert set(scores) == {1, 2, 3, 4}
    assert scores[1] == pytest.approx(2 / 3)
    assert scores[2] == 1.0
    assert scores[3] == 0.0 and scores[4] == 0.0
    # An explicitly requested label absent from both maps is undefined (0/0).
    explicit = dice(a, b, labels=[2, 7])
    assert explicit[2] == 1.0 and math.isnan(explicit[7])


@pytest.mark.parametrize("shape", SHAPES)
def test_identical_masks_score_perfectly(shape):
    labels = box(shape, (1,) * len(shape), (5,) * len(shape))
    labels[(2,) * len(shape)] = 2
    assert dice(labels, labels) == {1: 1.0, 2: 1.0}
    assert hausdorff95(labels, labels) == {1: 0.0, 2: 0.0}


def test_dice_rejects_maps_of_different_shapes():
    with pytest.raises(ValueError):
        dice(np.zeros((3, 3), dtype=int), np.zeros((3, 4), dtype=int))


# --- HD95 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "axis", "shift", "spacing"),
    [
        ((10, 12), 0, 3, (2.5, 0.7)),
        ((10, 12), 1, 2, (2.5, 0.7)),
        ((8, 9, 7), 0, 2, (3.0, 1.0, 0.5)),
        ((8, 9, 7), 2, 3, (3.0, 1.0, 0.5)),
    ],
)
def test_hd95_of_a_shifted_sheet_is_shift_times_spacing(shape, axis, shift, spacing):
    # A sheet one voxel thick along ``axis`` is all surface. Each voxel of it has a twin in the
    # shifted sheet at exactly ``shift * spacing[axis]``; any other voxel of the shifted sheet
    # adds a perpendicular offset, so is farther. Both directed distance sets are constant:
    # HD95 = shift * spacing[axis] (7.5, 1.4, 6.0 and 1.5 mm here).
    lo, hi = [2] * len(shape), [6] * len(shape)
    hi[axis] = 3
    a = box(shape, tuple(lo), tuple(hi))
    b = np.roll(a, shift, axis=axis)
    assert hausdorff95(a, b, spacing=spacing) == {1: pytest.approx(shift * spacing[axis])}
    # Swapping the maps changes nothing: the metric is symmetric.
    assert hausdorff95(b, a, spacing=spacing) == {1: pytest.approx(shift * spacing[axis])}


def test_hd95_takes_the_larger_directed_percentile_not_the_union():
    # A (1, n) array is 1-D in effect: every mask voxel is surface (axis 0 has no neighbours).
    # A = {0}, B = {0, 10}. Directed A->B: [0]; B->A: [0, 10] whose 95th percentile
    # (linear interpolation) is 0 + 0.95 * 10 = 9.5, so HD95 = max(0, 9.5) = 9.5 voxels,
    # times the 2 mm spacing of axis 1 = 19 mm. The union [0, 0, 10] would give 9 -> 18 mm.
    a = np.zeros((1, 12), dtype=np.int32)
    a[0, 0] = 1
    b = a.copy()
    b[0, 10] = 1
    assert hausdorff95(a, b, spacing=(5.0, 2.0)) == {1: pytest.approx(19.0)}


def test_hd95_between_nested_boxes():
    # Surfaces: the ring of a 7x7 box (24 voxels, Chebyshev radius 3 from the centre) and the
    # ring of a centred 3x3 box (8 voxels, radius 1). Inner -> outer: every voxel is 2 away.
    # Outer -> inner: 12 voxels at 2, 8 at sqrt(5), 4 corners at sqrt(8); the 95th percentile
    # sits at sorted index 0.95 * 23 = 21.85, among the corners: sqrt(8).
    outer = box((9, 9), (1, 1), (8, 8))
    inner = box((9, 9), (3, 3), (6, 6))
    assert hausdorff95(outer, inner) == {1: pytest.approx(math.sqrt(8.0))}


def test_hd95_is_nan_for_a_label_missing_from_a_map():
    a = np.zeros((5, 5), dtype=np.int32)
    a[1:3, 1:3] = 1
    b = np.zeros_like(a)
    scores = hausdorff95(a, b, labels=[1, 2])
    assert math.isnan(scores[1]) and math.isnan(scores[2])


def test_hd95_rejects_spacing_of_the_wrong_length():
    a = box((5, 5), (1, 1), (3, 3))
    with pytest.raises(ValueError):
        hausdorff95(a, a, spacing=(1.0, 1.0, 1.0))


# --- Jacobian -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_zero_displacement_has_unit_jacobian(shape):
    det = jacobian_determinant(np.zeros((len(shape), *shape)))
    assert det.shape == shape
    assert np.all(det == 1.0)
    assert jacobian_stats(det) == {
        "jacobian_min": 1.0,
        "jacobian_max": 1.0,
        "std_log_jacobian": 0.0,
        "folding_percent": 0.0,
    }


LINEAR_MAPS = {
    2: np.array([[0.3, -0.2], [0.5, 0.1]]),
    3: np.array([[0.2, 0.1, -0.3], [0.0, -0.4, 0.25], [0.15, 0.05, 0.1]]),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_linear_displacement_has_constant_jacobian(shape):
    # phi(x) = A x: finite differences (central or one-sided) of a linear function are exact,
    # so det(I + grad phi) = det(I + A) at every voxel, border included.
    matrix = LINEAR_MAPS[len(shape)]
    coords = np.indices(shape, dtype=np.float64)
    phi = np.einsum("cd,d...->c...", matrix, coords)
    expected = np.linalg.det(np.eye(len(shape)) + matrix)
    assert expected != pytest.approx(1.0)
    np.testing.assert_allclose(jacobian_determinant(phi), expected, rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_field_gives_a_float32_jacobian_close_to_float64(shape):
    # The engine passes float32 fields (half the time on a 1-mm brain); the values must not
    # move beyond float32 rounding.
    rng = np.random.default_rng(3)
    phi = rng.normal(0.0, 0.5, (len(shape), *shape))
    det32 = jacobian_determinant(phi.astype(np.float32))
    assert det32.dtype == np.float32
    np.testing.assert_allclose(det32, jacobian_determinant(phi), atol=1e-5)


def test_jacobian_uses_central_differences_inside_and_one_sided_at_the_border():
    # phi_0 = 0.1 x_0^2 on 5 rows: d phi_0 / d x_0 is 0.1 * ((x+1)^2 - (x-1)^2) / 2 = 0.2 x
    # inside, 0.1 * (1 - 0) = 0.1 at x_0 = 0 and 0.1 * (16 - 9) = 0.7 at x_0 = 4.
    x0 = np.indices((5, 3), dtype=np.float64)[0]
    phi = np.stack([0.1 * x0**2, np.zeros_like(x0)])
    det = jacobian_determinant(phi)
    expected_rows = 1.0 + np.array([0.1, 0.2, 0.4, 0.6, 0.7])
    np.testing.assert_allclose(det, np.repeat(expected_rows[:, None], 3, axis=1), rtol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_reflecting_field_folds_everywhere(shape):
    # phi_0(x) = -2 x_0 maps x_0 to -x_0: d(x_0 + phi_0)/dx_0 = -1, so det = -1 everywhere.
    phi = np.zeros((len(shape), *shape))
    phi[0] = -2.0 * np.indices(shape)[0]
    det = jacobian_determinant(phi)
    np.testing.assert_allclose(det, -1.0)
    stats = jacobian_stats(det)
    assert stats["folding_percent"] == 100.0
    assert stats["jacobian_min"] == pytest.approx(-1.0)
    assert stats["std_log_jacobian"] == 0.0  # every det clips to the same 1e-9


def test_jacobian_stats_hand_values_and_mask():
    det = np.array([[1.0, math.e**2], [-0.5, 0.0]])
    stats = jacobian_stats(det)
    assert stats["jacobian_min"] == -0.5
    assert stats["jacobian_max"] == pytest.approx(math.e**2)
    assert stats["folding_percent"] == 50.0  # det <= 0 counts, 0 included
    # Inside the mask the logs are [0, 2]: population std 1.
    mask = np.array([[True, True], [False, False]])
    masked = jacobian_stats(det, mask=mask)
    assert masked["std_log_jacobian"] == pytest.approx(1.0)
    assert masked["folding_percent"] == 0.0
    assert masked["jacobian_min"] == 1.0


def test_jacobian_rejects_a_field_of_the_wrong_shape():
    with pytest.raises(ValueError):
        jacobian_determinant(np.zeros((3, 4, 4)))  # 3 channels on a 2-D grid


# --- Intensity similarities -----------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_ncc_is_one_for_positive_affine_intensity_changes(shape):
    image = smooth_image(shape)
    assert ncc(image, image) == pytest.approx(1.0)
    assert ncc(image, 3.0 * image + 2.0) == pytest.approx(1.0)
    assert ncc(image, -image) == pytest.approx(-1.0)
    assert ncc(image, -0.5 * image + 4.0) == pytest.approx(-1.0)


def test_ncc_hand_value_and_constant_image():
    # Deviations from the mean 2.5: a' = [-1.5, -.5, .5, 1.5], b' = [-1.5, .5, -.5, 1.5];
    # sum a'b' = 4, sum a'^2 = sum b'^2 = 5, so r = 0.8.
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    b = np.array([[1.0, 3.0], [2.0, 4.0]])
    assert ncc(a, b) == pytest.approx(0.8)
    assert math.isnan(ncc(a, np.ones_like(a)))


def test_mse_and_rmse_hand_values():
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    b = np.array([[1.0, 1.0], [0.0, 3.0]])
    assert mse(a, b) == pytest.approx((1 + 0 + 4 + 0) / 4)
    assert rmse(a, b) == pytest.approx(math.sqrt(1.25))
    assert mse(a, a) == 0.0


@pytest.mark.parametrize("shape", SHAPES)
def test_nmi_is_two_for_identical_and_rescaled_images(shape):
    image = smooth_image(shape)
    assert nmi(image, image) == pytest.approx(2.0)
    # Each image is binned over its own range, so an affine rescaling bins identically.
    assert nmi(image, 5.0 * image - 1.0) == pytest.approx(2.0)


def test_nmi_hand_values():
    a = np.array([0.0, 0.0, 1.0, 1.0])
    # Independent pairing: H(A) = H(B) = ln 2, H(A, B) = ln 4 -> exactly 1.
    assert nmi(a, np.array([0.0, 1.0, 0.0, 1.0]), bins=2) == pytest.approx(1.0)
    # B = [0, 0, 0, 1]: H(B) = -(3/4 ln 3/4 + 1/4 ln 1/4); joint counts (0,0): 2, (1,0): 1,
    # (1,1): 1 -> H(A, B) = 1/2 ln 2 + 1/2 ln 4 = 1.5 ln 2.
    h_b = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    expected = (math.log(2) + h_b) / (1.5 * math.log(2))
    assert nmi(a, np.array([0.0, 0.0, 0.0, 1.0]), bins=2) == pytest.approx(expected)


def test_nmi_bins_as_histogram2d_over_each_image_range():
    # The bincount binning must count exactly what np.histogram2d counts over each image's
    # min..max, the maximum included in the last bin; integer-valued images put many
    # voxels on bin edges, where an off-by-one would show.
    rng = np.random.default_rng(5)
    for a, b in (
        (rng.random((30, 40)), rng.random((30, 40))),
        (rng.integers(0, 7, (32, 32)).astype(float), rng.integers(-3, 12, (32, 32)).astype(float)),
    ):
        joint, _, _ = np.histogram2d(
            a.ravel(), b.ravel(), bins=16, range=[(a.min(), a.max()), (b.min(), b.max())]
        )
        p = joint / joint.sum()

        def entropy(q):
            q = q[q > 0]
            return -np.sum(q * np.log(q))

        expected = (entropy(p.sum(1)) + entropy(p.sum(0))) / entropy(p)
        assert nmi(a, b, bins=16) == pytest.approx(expected, rel=1e-12)


def test_nmi_of_independent_images_is_near_one():
    rng = np.random.default_rng(0)
    a, b = rng.random((64, 64)), rng.random((64, 64))
    assert 1.0 <= nmi(a, b, bins=8) < 1.02
    assert nmi(a, b, bins=8) < nmi(a, a + 0.1 * b, bins=8) < nmi(a, a, bins=8)


# --- Groupwise PCA metrics ------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("frames", [2, 5])
def test_pca_of_identical_frames(shape, frames):
    # K is all ones: eigenvalues [N, 0, ...], so D_PCA1 = N - N = 0 and D_PCA2 = 1 * N.
    series = np.stack([smooth_image(shape)] * frames)
    result = pca_groupwise(series)
    assert result["d_pca1"] == pytest.approx(0.0, abs=1e-9)
    assert result["d_pca2"] == pytest.approx(frames)


def test_pca_ignores_per_frame_intensity_scaling():
    # qMRI frames differ by contrast: a_i * S(x) + b_i is still perfectly (anti)correlated.
    image = smooth_image((9, 11))
    series = np.stack([image, 3.0 * image + 1.0, -0.5 * image, 10.0 * image - 2.0])
    result = pca_groupwise(series)
    assert result["d_pca1"] == pytest.approx(0.0, abs=1e-9)
    assert result["d_pca2"] == pytest.approx(4.0)


def test_pca_of_uncorrelated_noise_frames():
    # K is close to the identity: all eigenvalues near 1, D_PCA1 ~ N - 1 = 3 and
    # D_PCA2 ~ 1 + 2 + 3 + 4 = 10 (sampling noise ~ sqrt(N / voxels) per eigenvalue).
    series = np.random.default_rng(1).standard_normal((4, 100, 100))
    result = pca_groupwise(series)
    assert result["d_pca1"] == pytest.approx(3.0, abs=0.05)
    assert result["d_pca2"] == pytest.approx(10.0, abs=0.15)


def test_pca_two_frame_hand_value():
    # Frames [1, 2, 3, 4] and [1, 3, 2, 4] correlate with r = 0.8: K = [[1, .8], [.8, 1]] has
    # eigenvalues 1.8 and 0.2, so D_PCA1 = 2 - 1.8 = 0.2 and D_PCA2 = 1.8 + 2 * 0.2 = 2.2.
    series = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]]).reshape(2, 2, 2)
    result = pca_groupwise(series)
    assert result["d_pca1"] == pytest.approx(0.2)
    assert result["d_pca2"] == pytest.approx(2.2)
    # With L = 2 every component is "signal": nothing is left outside.
    assert pca_groupwise(series, n_components=2)["d_pca1"] == pytest.approx(0.0, abs=1e-12)


def test_pca_penalises_misalignment():
    image = smooth_image((16, 16))
    aligned = np.stack([image * (1.0 + 0.2 * i) for i in range(4)])
    misaligned = np.stack([np.roll(frame, 2 * i, axis=1) for i, frame in enumerate(aligned)])
    good, bad = pca_groupwise(aligned), pca_groupwise(misaligned)
    assert bad["d_pca1"] > good["d_pca1"] + 0.1
    assert bad["d_pca2"] > good["d_pca2"] + 0.1


def test_pca_mask_restricts_the_voxels():
    # Frames agree inside the mask and are independent noise outside it.
    rng = np.random.default_rng(2)
    image = smooth_image((12, 12))
    series = np.stack([image + 0.0 * i for i in range(3)])
    mask = np.zeros((12, 12), dtype=bool)
    mask[2:10, 2:10] = True
    series[:, ~mask] = rng.standard_normal((3, int((~mask).sum())))
    assert pca_groupwise(series, mask=mask)["d_pca1"] == pytest.approx(0.0, abs=1e-9)
    assert pca_groupwise(series)["d_pca1"] > 0.5


def test_pca_rejects_bad_input_and_flags_constant_frames():
    series = np.stack([smooth_image((6, 6))] * 3)
    with pytest.raises(ValueError):
        pca_groupwise(series, n_components=4)
    with pytest.raises(ValueError):
        pca_groupwise(series[:1])
    series[1] = 7.0  # no std to standardise by
    result = pca_groupwise(series)
    assert math.isnan(result["d_pca1"]) and math.isnan(result["d_pca2"])


# --- Report ---------------------------------------------------------------------------------


def test_label_overlap_report_is_json_ready_with_nan_aware_means():
    fixed = np.zeros((6, 6), dtype=np.int32)
    fixed[1:3, 1:3] = 1
    fixed[4, 4] = 2
    warped = np.zeros_like(fixed)
    warped[1:3, 1:3] = 1  # label 1 identical, label 2 lost, label 3 appears
    warped[0, 5] = 3
    report = label_overlap_report(fixed, warped, spacing=(2.0, 1.0))
    assert report["dice"] == {"1": 1.0, "2": 0.0, "3": 0.0}
    assert report["hd95"]["1"] == 0.0
    assert math.isnan(report["hd95"]["2"]) and math.isnan(report["hd95"]["3"])
    assert report["dice_mean"] == pytest.approx(1 / 3)
    assert report["hd95_mean"] == 0.0  # nan labels left out
    assert json.loads(json.dumps(report))["dice"]["1"] == 1.0


def test_label_overlap_report_of_empty_maps():
    empty = np.zeros((4, 4), dtype=np.int32)
    report = label_overlap_report(empty, empty)
    assert report["dice"] == {} and report["hd95"] == {}
    assert math.isnan(report["dice_mean"]) and math.isnan(report["hd95_mean"])


def test_hd95_is_unchanged_by_empty_margins_and_border_contact():
    """Scoring works on each label's bounding box; padding the maps must change nothing,
    and a label touching the array border keeps its border voxels as surface."""
    rng = np.random.default_rng(3)
    a = np.kron(rng.integers(0, 4, (5, 6, 4)), np.ones((3, 3, 3), int))
    b = np.roll(a, 2, axis=1)
    spacing = (1.0, 1.5, 2.0)
    tight = hausdorff95(a, b, spacing=spacing)
    padded = hausdorff95(np.pad(a, 7), np.pad(b, 7), spacing=spacing)
    assert tight.keys() == padded.keys() == {1, 2, 3}
    from model.networks.metrics import _directed_surface_distances, _surface

    for label in tight:  # against the whole-image computation
        sa, sb = _surface(a == label), _surface(b == label)
        whole = max(
            np.percentile(_directed_surface_distances(sa, sb, spacing), 95),
            np.percentile(_directed_surface_distances(sb, sa, spacing), 95),
        )
        assert tight[label] == pytest.approx(whole)
        assert padded[label] == pytest.approx(whole)


def test_dice_counts_the_same_with_or_without_the_bincount_shortcut():
    # Integer maps take three bincounts; float or negative labels take the per-label masks.
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 6, (20, 30)), rng.integers(0, 6, (20, 30))
    fast = dice(a, b, labels=[1, 2, 3, 4, 5, 9])
    assert fast == pytest.approx(
        dice(a.astype(float), b.astype(float), [1, 2, 3, 4, 5, 9]), nan_ok=True
    )
    assert math.isnan(fast[9])  # absent from both maps
    shifted = dice(a - 1, b - 1, labels=[0, 1, 2, 3, 4])  # -1 present: the slow path
    assert [shifted[k] for k in range(5)] == pytest.approx([fast[k] for k in range(1, 6)])


def test_end_point_error_is_the_mean_distance_in_mm_inside_the_mask():
    truth = np.zeros((2, 4, 5))
    phi = np.zeros((2, 4, 5))
    phi[0, :2] = 3.0  # 3 voxels along axis 0 (2 mm each) and 4 along axis 1 (0.5 mm each)
    phi[1, :2] = 4.0
    # sqrt(6² + 2²) mm on the first two rows, 0 on the others
    assert end_point_error(phi, truth, (2.0, 0.5)) == pytest.approx(np.hypot(6, 2) / 2)
    mask = np.zeros((4, 5), dtype=bool)
    mask[0] = True
    assert end_point_error(phi, truth, (2.0, 0.5), mask) == pytest.approx(np.hypot(6, 2))
    assert end_point_error(truth, phi) == pytest.approx(2.5)  # unit spacing, symmetric
    with pytest.raises(ValueError, match="differ in shape"):
        end_point_error(phi, truth[:, :3])
