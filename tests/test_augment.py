"""Training-pair augmentation: one transform for both images and labels, labels kept
discrete, simulations with a true field untouched, the same draw for the same seed; the
elastic deformation one smooth field per image, within its amplitude."""

from __future__ import annotations

import numpy as np
import pytest

from conventions.errors import InputError
from model.training.augment import (
    _bspline_basis,
    affine_augmented,
    elastic_augmented,
    flipped,
    gamma_augmented,
)
from model.training.config import TrainConfig
from model.training.datasets import Pair


def _labelled(shape: tuple[int, ...]) -> Pair:
    """A pair whose intensity is its label / 3 (three nested boxes about an off-centre point)
    and whose moving image is the fixed one shifted by two voxels along the first axis."""
    grid = np.indices(shape)
    centre = np.asarray(shape)[(...,) + (None,) * len(shape)] * 0.45
    radius = np.abs(grid - centre).max(0)
    fixed_labels = np.select([radius < 3, radius < 6, radius < 9], [3, 2, 1], 0).astype(np.int32)
    moving_labels = np.roll(fixed_labels, 2, axis=0)
    return Pair(
        (moving_labels / 3).astype(np.float32),
        (fixed_labels / 3).astype(np.float32),
        moving_labels,
        fixed_labels,
    )


@pytest.mark.parametrize("shape", [(32, 28), (24, 22, 20)])
def test_one_affine_moves_images_and_labels_together(shape):
    pair = _labelled(shape)
    moved = affine_augmented(pair, np.random.default_rng(1), rotate_deg=20, scale=0.15)
    assert moved.fixed.shape == shape and moved.fixed_labels.dtype == np.int32
    assert not np.array_equal(moved.fixed_labels, pair.fixed_labels)  # it did move
    assert set(np.unique(moved.fixed_labels)) <= {0, 1, 2, 3}  # nearest neighbour
    for image, labels in ((moved.fixed, moved.fixed_labels), (moved.moving, moved.moving_labels)):
        # label and intensity still agree: by less than one label step at the boxes' edges,
        # where the image is interpolated, and closely on average (labels left where they
        # were would be off by 0.16-0.30 on average and by up to 1.5)
        gap = np.abs(image * 3 - labels)
        assert gap.max() < 0.9 and gap.mean() < 0.1
    # the deformation between the two is the data's: a pair with none still has none
    same = Pair(pair.fixed, pair.fixed.copy(), pair.fixed_labels, pair.fixed_labels.copy())
    moved = affine_augmented(same, np.random.default_rng(1), rotate_deg=20, scale=0.15)
    assert np.array_equal(moved.moving, moved.fixed)
    assert np.array_equal(moved.moving_labels, moved.fixed_labels)


def test_a_rotation_alone_keeps_the_area_and_the_centre():
    shape = (41, 41)
    disk = ((np.indices(shape) - 20) ** 2).sum(0) <= 12**2
    pair = Pair(disk.astype(np.float32), disk.astype(np.float32), disk.astype(np.int32), None)
    moved = affine_augmented(pair, np.random.default_rng(3), rotate_deg=30, scale=0)
    assert moved.moving_labels.sum() == pytest.approx(disk.sum(), rel=0.03)
    assert np.argwhere(moved.moving_labels).mean(0) == pytest.approx([20, 20], abs=0.3)
    assert moved.fixed_labels is None


def test_the_draw_depends_on_the_generator_alone_and_zero_is_off():
    pair = _labelled((32, 28))
    a = affine_augmented(pair, np.random.default_rng(7), 15, 0.1)
    b = affine_augmented(pair, np.random.default_rng(7), 15, 0.1)
    c = affine_augmented(pair, np.random.default_rng(8), 15, 0.1)
    assert np.array_equal(a.fixed, b.fixed) and not np.array_equal(a.fixed, c.fixed)
    assert affine_augmented(pair, np.random.default_rng(7), 0, 0) is pair
    assert gamma_augmented(pair, np.random.default_rng(7), 0) is pair


def test_a_pair_with_a_true_field_is_not_moved():
    pair = _labelled((32, 28))
    pair.truth = np.zeros((2, 32, 28), np.float32)
    rng = np.random.default_rng(0)
    assert affine_augmented(pair, rng, 20, 0.1) is pair and flipped(pair, rng) is pair
    assert elastic_augmented(pair, rng, 3, 8) is pair


def test_gamma_changes_contrast_per_image_and_keeps_order_and_labels():
    pair = _labelled((32, 28))
    pair.moving = np.linspace(0, 1, 32 * 28, dtype=np.float32).reshape(32, 28)
    changed = gamma_augmented(pair, np.random.default_rng(2), gamma=0.5)
    assert changed.moving.min() >= 0 and changed.moving.max() <= 1
    assert np.all(np.diff(changed.moving.ravel()) >= 0)  # monotone: the order is kept
    assert not np.allclose(changed.moving, pair.moving)
    assert changed.moving_labels is pair.moving_labels and changed.fixed_labels is pair.fixed_labels


def test_bad_augmentation_settings_are_refused():
    for values in (
        {"affine_scale": 1.0},
        {"affine_rotate": -1.0},
        {"intensity_gamma": -0.1},
        {"elastic": -1.0},
        {"elastic_spacing": 1},
    ):
        with pytest.raises(InputError):
            TrainConfig.from_dict({"data": "x", **values}).check()


@pytest.mark.parametrize("shape", [(40, 36), (30, 28, 26)])
def test_elastic_bends_each_image_with_its_own_labels(shape):
    pair = _labelled(shape)
    same = Pair(pair.fixed, pair.fixed.copy(), pair.fixed_labels, pair.fixed_labels.copy())
    bent = elastic_augmented(same, np.random.default_rng(4), amplitude=3, spacing=8)
    # two new shapes: a pair with no deformation between its images now has one
    assert not np.array_equal(bent.moving_labels, bent.fixed_labels)
    for image, labels in ((bent.fixed, bent.fixed_labels), (bent.moving, bent.moving_labels)):
        assert labels.dtype == np.int32 and set(np.unique(labels)) <= {0, 1, 2, 3}
        gap = np.abs(image * 3 - labels)  # the image and its labels moved together
        assert gap.max() < 0.9 and gap.mean() < 0.05
        # a bend, not a shift: the boxes' sizes are roughly kept, their voxels moved
        assert labels.astype(bool).sum() == pytest.approx(
            same.fixed_labels.astype(bool).sum(), rel=0.15
        )
        assert not np.array_equal(labels, same.fixed_labels)
    again = elastic_augmented(same, np.random.default_rng(4), amplitude=3, spacing=8)
    assert np.array_equal(again.moving, bent.moving)
    assert elastic_augmented(same, np.random.default_rng(4), amplitude=0, spacing=8) is same


def test_elastic_field_is_a_partition_of_unity_so_it_stays_within_the_amplitude():
    for n in (7, 28, 64, 65):
        for spacing in (4, 8, 16):
            basis = _bspline_basis(n, spacing)
            assert np.all(basis >= 0) and np.allclose(basis.sum(1), 1)
            assert basis.shape[1] == -(-(n - 1) // spacing) + 3  # one beyond each end
    # labels move by at most the amplitude: a one-voxel point moves no further
    shape = (48, 48)
    dot = np.zeros(shape, np.int32)
    dot[24, 24] = 1
    pair = Pair(dot.astype(np.float32), dot.astype(np.float32), dot, dot.copy())
    for seed in range(5):
        bent = elastic_augmented(pair, np.random.default_rng(seed), amplitude=2, spacing=8)
        for labels in (bent.moving_labels, bent.fixed_labels):
            if labels.any():
                assert np.abs(np.argwhere(labels) - 24).max() <= 2 + 1  # + nearest rounding
