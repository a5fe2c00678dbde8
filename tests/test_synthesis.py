"""SynthMorph-style brain pairs: loading, alignment, working grid, deformations, images.

The label maps are tiny synthetic heads written here (never ../shared): nested ellipsoids with
FreeSurfer ids, one head label to strip, stored in a non-LPS orientation, posed differently.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conventions.errors import InputError
from conventions.grid import Grid, model_grid
from model.networks.metrics import dice, jacobian_determinant
from model.training import synthesis
from model.training.synthesis import (
    LABEL_NAMES,
    BrainLabels,
    BrainSynth,
    SynthParams,
    random_displacement,
    standard_labels,
    upsample,
    warp_nearest,
    working_grid,
)

BOX = (48, 52, 60)  # left-right, inferior-superior, anterior-posterior (mm)
SCORED = (2, 3, 4, 16, 41, 42, 43)
CLEAN = SynthParams(
    deform_std_voxels=0.0,
    std_range=(0.0, 0.0),
    t1_jitter=0.0,
    t1_std_range=(0.0, 0.0),
    blur_sigma=0.0,
    bias_std=0.0,
    noise_std=0.0,
    gamma_std=0.0,
)


def head(
    pitch_deg: float = 0.0, shift_mm=(0.0, 0.0, 0.0), scale: float = 1.0, size: int = 64
) -> sitk.Image:
    """A 1-mm head label map, posed by a pitch (about left-right), a shift and a scale,
    returned in LIA orientation (as the SynthSeg maps are stored)."""
    axes = (np.arange(size) - (size - 1) / 2).astype(np.float64)
    s, p, l = np.meshgrid(axes, axes, axes, indexing="ij")  # LPS numpy order: S, P, L
    s, p, l = s - shift_mm[0], p - shift_mm[1], l - shift_mm[2]
    angle = np.radians(pitch_deg)
    s, p = np.cos(angle) * s + np.sin(angle) * p, -np.sin(angle) * s + np.cos(angle) * p
    s, p, l = s / scale, p / scale, l / scale

    def inside(rs, rp, rl, cs=0.0, cp=0.0, cl=0.0):
        return ((s - cs) / rs) ** 2 + ((p - cp) / rp) ** 2 + ((l - cl) / rl) ** 2 <= 1

    left = l > 0  # LPS: +x points to the patient's left
    labels = np.zeros(s.shape, dtype=np.int16)
    labels[inside(28, 30, 26)] = 507  # scalp/skull: a head label to strip
    labels[inside(22, 26, 20)] = 24  # CSF
    labels[inside(20, 24, 18)] = np.where(left, 3, 42)[inside(20, 24, 18)]
    wm = inside(15, 19, 14)
    labels[wm] = np.where(left, 2, 41)[wm]
    for side, label in ((4.0, 4), (-4.0, 43)):
        labels[inside(5, 9, 2.5, cs=3, cp=-2, cl=side)] = label
    stem = (s > -24) & (s < -10) & ((p - 5) ** 2 + l**2 < 25)
    labels[stem] = 16
    image = sitk.GetImageFromArray(labels)
    image.SetOrigin([-(size - 1) / 2] * 3)
    return sitk.DICOMOrient(image, "LIA")


POSES = {
    "subject_a": (0.0, (0, 0, 0), 1.0),
    "subject_b": (20.0, (3, -2, 1), 1.0),
    "subject_c": (-15.0, (0, 2, -1), 1.08),
}


@pytest.fixture(scope="module")
def label_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labels")
    for name, (pitch, shift, scale) in POSES.items():
        sitk.WriteImage(head(pitch, shift, scale), str(folder / f"{name}.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def labels(label_dir):
    return BrainLabels(label_dir, spacing_mm=2.0, box_mm=BOX)


def mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.nanmean(list(dice(a, b, SCORED).values())))


# -- labels and grid ------------------------------------------------------------------------


def test_standard_labels_are_the_oasis_structures_in_both_hemispheres():
    ids = standard_labels()
    assert len(ids) == len(set(ids)) == 31
    names = [LABEL_NAMES[i] for i in ids]
    for name in names:
        if name.startswith("Left-"):
            assert "Right-" + name.removeprefix("Left-") in names
    assert {"3rd-Ventricle", "4th-Ventricle", "Brain-Stem"} <= set(names)


def test_working_grid_is_the_engines_grid_for_an_oasis_brain():
    # A 160×192×224 1-mm volume stored like the Learn2Reg OASIS brains (L-R, I-S, A-P axes).
    oasis = sitk.Image([160, 192, 224], sitk.sitkUInt8)
    oasis.SetDirection((1, 0, 0, 0, 0, -1, 0, -1, 0))
    engine = model_grid(oasis, 2.0)
    ours = working_grid((0.0, 0.0, 0.0), 2.0)
    assert ours.shape == engine.shape == (97, 113, 81)
    np.testing.assert_allclose(ours.spacing, engine.spacing)
    assert ours.direction == engine.direction


def test_maps_are_brain_labels_on_the_working_grid(labels):
    assert labels.ids == sorted(POSES)
    assert labels.shape == labels.grid.shape == working_grid((0, 0, 0), 2.0, box_mm=BOX).shape
    for subject in labels.ids:
        volume = labels[subject]
        assert volume.dtype == np.int16 and volume.shape == labels.shape
        present = set(np.unique(volume).tolist())
        assert 507 not in present  # head labels stripped
        assert {2, 3, 16, 41, 42} <= present
        # The box is centred on the brain: no tissue touches the box's faces.
        tissue = (volume > 0) & (volume != 24)
        for axis in range(3):
            assert not tissue.take([0, -1], axis=axis).any()


def test_maps_become_images_in_physical_space(labels):
    image = labels.image(labels["subject_a"])
    assert Grid.of(image) == labels.grid
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels["subject_a"])


def test_affine_alignment_brings_posed_heads_together(label_dir, labels):
    centred = BrainLabels(label_dir, spacing_mm=2.0, box_mm=BOX, align="center")
    assert labels.reference == centred.reference == "subject_a"  # the median pitch
    for subject in ("subject_b", "subject_c"):
        aligned = mean_dice(labels[labels.reference], labels[subject])
        before = mean_dice(centred[centred.reference], centred[subject])
        assert aligned > 0.8
        assert aligned > before + 0.1


def test_split_is_seeded_disjoint_and_complete(labels):
    train, test = labels.split(n_test=1, seed=3)
    assert (train, test) == labels.split(n_test=1, seed=3)
    assert len(test) == 1 and sorted(train + test) == labels.ids
    assert {tuple(labels.split(1, seed)[1]) for seed in range(10)} != {tuple(test)}
    for bad in (0, 3):
        with pytest.raises(InputError, match="n_test"):
            labels.split(n_test=bad)


def test_cache_reloads_the_same_maps_without_reading(label_dir, tmp_path, monkeypatch):
    first = BrainLabels(label_dir, spacing_mm=4.0, box_mm=BOX, align="center", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("brain-labels-*.npz"))) == 1

    def refuse(path):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(synthesis, "_load_subject", refuse)
    second = BrainLabels(label_dir, spacing_mm=4.0, box_mm=BOX, align="center", cache_dir=tmp_path)
    assert second.ids == first.ids and second.grid == first.grid
    assert second.reference == first.reference
    for subject in first.ids:
        np.testing.assert_array_equal(second[subject], first[subject])


def test_bad_folders_and_options_are_refused(label_dir, tmp_path):
    with pytest.raises(InputError, match="not found"):
        BrainLabels(tmp_path / "missing")
    sitk.WriteImage(head(), str(tmp_path / "only.nii.gz"))
    with pytest.raises(InputError, match="at least two"):
        BrainLabels(tmp_path)
    with pytest.raises(InputError, match="not found in"):
        BrainLabels(label_dir, ids=["subject_a", "nobody"])
    with pytest.raises(InputError, match="align"):
        BrainLabels(label_dir, align="rigid")


# -- deformations -------------------------------------------------------------------------


def test_upsample_is_exact_on_linear_ramps():
    coarse = np.stack(np.meshgrid(np.arange(3.0), np.arange(4.0), indexing="ij"))
    fine = upsample(coarse, (9, 13))
    expected = np.stack(np.meshgrid(np.linspace(0, 2, 9), np.linspace(0, 3, 13), indexing="ij"))
    np.testing.assert_allclose(fine, expected, atol=1e-6)


def test_random_displacement_is_smooth_and_invertible():
    rng = np.random.default_rng(0)
    shape = (20, 24, 18)
    phi = random_displacement(shape, rng, std_voxels=2.0, spacing_voxels=6.0)
    assert phi.shape == (3, *shape) and phi.dtype == np.float32
    assert 0.3 < np.abs(phi).max() < 12.0
    assert jacobian_determinant(phi).min() > 0  # no folding
    # Smooth: blurring by a voxel barely changes it (white noise would lose most of its energy).
    blurred = ndimage.gaussian_filter(phi, sigma=(0, 1, 1, 1))
    assert np.linalg.norm(phi - blurred) < 0.2 * np.linalg.norm(phi)  # white noise: 0.94
    np.testing.assert_array_equal(random_displacement(shape, rng, 0.0), 0.0)


def test_warp_nearest_follows_the_displacement_convention():
    labels = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    shift = np.zeros((3, 5, 6, 7))
    shift[1] = 2.0  # sample two voxels further along axis 1
    warped = warp_nearest(labels, shift)
    np.testing.assert_array_equal(warped[:, :4], labels[:, 2:])
    np.testing.assert_array_equal(warped[:, 4:], labels[:, 5:6].repeat(2, axis=1))  # edges


# -- pairs --------------------------------------------------------------------------------


def test_pairs_have_the_training_contract(labels):
    synth = BrainSynth(labels, labels.ids, seed=0)
    pair = synth.pair()
    assert set(pair) == {"moving", "fixed", "moving_labels", "fixed_labels"}
    for key in ("moving", "fixed"):
        assert pair[key].shape == labels.shape and pair[key].dtype == np.float32
        assert pair[key].min() >= 0.0 and pair[key].max() == pytest.approx(1.0)
    for key in ("moving_labels", "fixed_labels"):
        assert pair[key].shape == labels.shape and pair[key].dtype == np.int16
        assert set(np.unique(pair[key])) <= set(synth.label_ids.tolist())


def test_pairs_are_reproducible_from_the_generator(labels):
    synth = BrainSynth(labels, labels.ids, seed=0, contrast="t1")
    one = synth.pair(np.random.default_rng(7))
    two = synth.pair(np.random.default_rng(7))
    other = synth.pair(np.random.default_rng(8))
    for key in one:
        np.testing.assert_array_equal(one[key], two[key])
    assert not np.array_equal(one["moving"], other["moving"])


def test_undeformed_pairs_are_two_different_subjects(labels):
    synth = BrainSynth(labels, labels.ids, seed=1, params=CLEAN)
    subjects = {s: labels[s] for s in labels.ids}
    for _ in range(4):
        pair = synth.pair()
        moving = [s for s, v in subjects.items() if np.array_equal(v, pair["moving_labels"])]
        fixed = [s for s, v in subjects.items() if np.array_equal(v, pair["fixed_labels"])]
        assert len(moving) == len(fixed) == 1 and moving != fixed
    same = BrainSynth(labels, labels.ids, seed=1, params=CLEAN, intra_fraction=1.0).pair()
    np.testing.assert_array_equal(same["moving_labels"], same["fixed_labels"])


@pytest.mark.parametrize("contrast", ["random", "t1"])
def test_clean_images_are_one_intensity_per_label(labels, contrast):
    pair = BrainSynth(labels, labels.ids, seed=2, contrast=contrast, params=CLEAN).pair()
    image, volume = pair["fixed"], pair["fixed_labels"]
    for label in np.unique(volume):
        assert np.ptp(image[volume == label]) < 1e-6
    if contrast == "t1":  # T1-weighted order: white matter > cortex > ventricle > background
        value = {label: image[volume == label][0] for label in (0, 2, 3, 4)}
        assert value[2] > value[3] > value[4] > value[0] == 0.0


def test_shared_contrast_orders_label_intensities_alike(labels):
    def label_order_agrees(shared: bool) -> bool:
        pair = BrainSynth(labels, labels.ids, seed=3, shared_contrast=shared, params=CLEAN).pair()
        common = np.intersect1d(pair["moving_labels"], pair["fixed_labels"])
        values = [
            np.array([pair[k][pair[f"{k}_labels"] == label][0] for label in common])
            for k in ("moving", "fixed")
        ]
        order = np.argsort(values[0], kind="stable")
        # normalize() is monotone (clipping may tie the extremes), so shared label
        # intensities keep their order in both images.
        return bool(np.all(np.diff(values[1][order]) >= -1e-6))

    assert label_order_agrees(shared=True)
    assert not label_order_agrees(shared=False)


def test_bad_synth_options_are_refused(labels):
    with pytest.raises(InputError, match="contrast"):
        BrainSynth(labels, labels.ids, contrast="t2")
    with pytest.raises(InputError, match="unknown subjects"):
        BrainSynth(labels, ["nobody", "subject_a"])
    with pytest.raises(InputError, match="two subjects"):
        BrainSynth(labels, ["subject_a"])
