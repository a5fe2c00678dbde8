"""SynthMorph-style training pairs synthesised from whole-head anatomical label maps.

Real brain intensity images are scarce here; anatomical label maps are not (the SynthSeg
release holds 20 whole-head maps). Following SynthMorph (Hoffmann et al., "SynthMorph: learning
contrast-invariant registration without acquired images", IEEE TMI 2022), a training pair is
made from two label maps: each is deformed by a random smooth diffeomorphism, an image is drawn
from it (one Gaussian intensity distribution per label, blur, multiplicative bias field, noise,
gamma), and the image is normalised by the very rule inference uses
(``conventions.intensity.normalize``).

- ``BrainLabels`` loads the maps once, strips the non-brain head labels (so images look like
  the skull-stripped brains registration is used on), brings every map into one affine space
  (the analogue of the affine pre-alignment of OASIS-space brains) and onto exactly the working
  grid the engine uses for a 160×192×224 1-mm brain at the model's spacing.
- ``BrainSynth`` draws pairs from a set of those subjects.
- ``standard_labels()`` names the structures over which brain registration Dice is reported.

Pure numpy/scipy (plus SimpleITK for loading and the one-off affine alignment): a pair at
97×113×81 voxels takes about 0.15 s on one core; loading and aligning the 20 maps about 50 s
(cached with ``cache_dir``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from conventions import header
from conventions.errors import InputError
from conventions.grid import Grid, model_grid, oriented
from conventions.intensity import normalize

# -- labels -------------------------------------------------------------------------------

# SynthSeg's whole-head maps label non-brain head tissues (skull, scalp, eyes, ...) 502-530;
# every FreeSurfer brain label is below 500.
HEAD_LABELS_FROM = 500

# FreeSurfer names of the brain labels found in the SynthSeg maps (FreeSurferColorLUT).
# fmt: off
LABEL_NAMES: dict[int, str] = {
    2: "Left-Cerebral-White-Matter", 3: "Left-Cerebral-Cortex", 4: "Left-Lateral-Ventricle",
    5: "Left-Inf-Lat-Vent", 7: "Left-Cerebellum-White-Matter", 8: "Left-Cerebellum-Cortex",
    10: "Left-Thalamus", 11: "Left-Caudate", 12: "Left-Putamen", 13: "Left-Pallidum",
    14: "3rd-Ventricle", 15: "4th-Ventricle", 16: "Brain-Stem", 17: "Left-Hippocampus",
    18: "Left-Amygdala", 24: "CSF", 25: "Left-Lesion", 26: "Left-Accumbens-area",
    28: "Left-VentralDC", 30: "Left-vessel", 41: "Right-Cerebral-White-Matter",
    42: "Right-Cerebral-Cortex", 43: "Right-Lateral-Ventricle", 44: "Right-Inf-Lat-Vent",
    46: "Right-Cerebellum-White-Matter", 47: "Right-Cerebellum-Cortex", 49: "Right-Thalamus",
    50: "Right-Caudate", 51: "Right-Putamen", 52: "Right-Pallidum", 53: "Right-Hippocampus",
    54: "Right-Amygdala", 57: "Right-Lesion", 58: "Right-Accumbens-area", 60: "Right-VentralDC",
    62: "Right-vessel", 72: "5th-Ventricle", 85: "Optic-Chiasm",
}
# fmt: on

# Learn2Reg 2021's OASIS task scores the 35 structures of the neurite-oasis "seg35" maps
# (from the FreeSurfer segmentations VoxelMorph's OASIS experiments use): per hemisphere
# cerebral WM and cortex, lateral and inferior lateral ventricle, cerebellum WM and cortex,
# thalamus, caudate, putamen, pallidum, hippocampus, amygdala, accumbens, ventral DC, vessel and
# choroid plexus, plus 3rd/4th ventricle and brain stem. The SynthSeg maps have no choroid
# plexus and only specks of vessel (tens of voxels), so those four are left out: 31 labels.
# fmt: off
STANDARD_LABELS: tuple[int, ...] = (
    2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 17, 18, 26, 28,  # left hemisphere
    41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60,  # right hemisphere
    14, 15, 16,  # midline: 3rd ventricle, 4th ventricle, brain stem
)
# fmt: on


def standard_labels() -> tuple[int, ...]:
    """FreeSurfer ids of the 31 structures brain registration Dice is reported over (see
    ``STANDARD_LABELS``; names in ``LABEL_NAMES``)."""
    return STANDARD_LABELS


def standard_label_names() -> dict[int, str]:
    """``standard_labels`` with their FreeSurfer names, for tables."""
    return {label: LABEL_NAMES[label] for label in STANDARD_LABELS}


# Typical T1-weighted intensities on FreeSurfer's norm.mgz scale (white matter normalised to
# 110), used for contrast="t1" and for the affine alignment. SynthSeg's prior_means_t1.npy is
# indexed by 25 tissue classes whose label-to-class table (generation_classes_contrast_specific)
# is not in the data release, so it cannot be applied to these labels; these values are ours.
# fmt: off
T1_INTENSITY: dict[int, float] = {
    0: 0.0, 2: 110.0, 41: 110.0, 3: 75.0, 42: 75.0, 7: 100.0, 46: 100.0, 8: 70.0, 47: 70.0,
    10: 90.0, 49: 90.0, 11: 78.0, 50: 78.0, 12: 82.0, 51: 82.0, 13: 98.0, 52: 98.0,
    16: 95.0, 17: 72.0, 53: 72.0, 18: 74.0, 54: 74.0, 25: 85.0, 57: 85.0, 26: 78.0, 58: 78.0,
    28: 92.0, 60: 92.0, 30: 60.0, 62: 60.0, 85: 100.0,
    4: 30.0, 43: 30.0, 5: 30.0, 44: 30.0, 14: 30.0, 15: 30.0, 24: 30.0, 72: 30.0,  # fluid
}
# fmt: on
T1_OTHER = 88.0  # labels without an entry (e.g. SynthSeg's 136/137/163/164): WM/GM mixture


def _lookup(table: dict[int, float], labels: np.ndarray, default: float) -> np.ndarray:
    return np.array([table.get(int(label), default) for label in labels], dtype=np.float32)


# -- the working grid ---------------------------------------------------------------------

# The field of view of OASIS-space brains (Learn2Reg): 160 mm left-right, 192 mm
# inferior-superior, 224 mm anterior-posterior, 1-mm voxels.
BOX_MM = (160, 192, 224)


def working_grid(
    centre_mm: Sequence[float],
    spacing_mm: float | None = 2.0,
    shape_multiple: int = 1,
    max_voxels: int | None = None,
    box_mm: Sequence[int] = BOX_MM,
) -> Grid:
    """The model grid the engine uses for a 1-mm brain volume of ``box_mm`` (left-right,
    inferior-superior, anterior-posterior) centred at ``centre_mm`` (LPS).

    Built by ``conventions.grid.model_grid`` itself, so training sees the same voxel size and shape
    as inference on such a brain: 97×113×81 (S, P, L) at 2 mm for the default box.
    """
    lr, si, ap = (int(n) for n in box_mm)
    box = sitk.Image([lr, ap, si], sitk.sitkUInt8)  # ITK order in LPS: x = L, y = P, z = S
    half = (np.array([lr, ap, si], dtype=np.float64) - 1) / 2
    box.SetOrigin(tuple(float(c) for c in np.asarray(centre_mm, dtype=np.float64) - half))
    return model_grid(box, spacing_mm, shape_multiple, max_voxels)


# -- loading and aligning label maps ------------------------------------------------------

ALIGN_SPACING_MM = 4.0  # the affine alignment works on coarse images: fast and robust
ALIGN_MODES = ("affine", "center")
RESAMPLE_MODES = {"nearest": sitk.sitkNearestNeighbor, "gaussian": sitk.sitkLabelGaussian}
CACHE_VERSION = 1
CROP_MARGIN_MM = 8.0  # CSF kept around the brain tissue's bounding box


@dataclass
class _Subject:
    labels: sitk.Image  # int16, LPS, head labels stripped, cropped around the brain
    centre: np.ndarray  # LPS mm: centre of the bounding box of brain tissue (CSF excluded)
    pitch_deg: float  # angle of the brain's long axis in the sagittal plane
    coarse: sitk.Image  # T1-like image at ALIGN_SPACING_MM for the alignment


def _nifti_paths(label_dir: Path) -> dict[str, Path]:
    paths = {}
    for path in sorted(label_dir.iterdir()):
        name = path.name
        for suffix in (".nii.gz", ".nii"):
            if name.endswith(suffix) and path.is_file():
                paths[name[: -len(suffix)]] = path
    return paths


def _brain_points_mm(image: sitk.Image, step: int = 2) -> np.ndarray:
    """Physical LPS points (n, 3) of brain tissue voxels (every ``step``-th voxel per axis)."""
    labels = sitk.GetArrayViewFromImage(image)[::step, ::step, ::step]
    index = np.argwhere((labels > 0) & (labels != 24))[:, ::-1] * step  # ITK order
    grid = Grid.of(image)
    return np.asarray(grid.origin) + index @ grid.index_to_physical.T


def _pitch_deg(points: np.ndarray) -> float:
    """Angle of the long axis of the brain in the sagittal (P, S) plane, in (-90, 90]."""
    sagittal = points[:, 1:] - points[:, 1:].mean(axis=0)
    _, vectors = np.linalg.eigh(sagittal.T @ sagittal)
    p, s = vectors[:, -1]
    angle = float(np.degrees(np.arctan2(s, p)))
    return (angle + 90.0) % 180.0 - 90.0


def _coarse_t1(labels: sitk.Image) -> sitk.Image:
    """A smooth T1-like image of the label map on an ALIGN_SPACING_MM grid."""
    grid = Grid.of(labels)
    extent = np.asarray(grid.size) * np.asarray(grid.spacing)
    size = tuple(int(np.ceil(e / ALIGN_SPACING_MM)) for e in extent)
    coarse = Grid(size, (ALIGN_SPACING_MM,) * 3, grid.origin, grid.direction)
    nearest = coarse.resample(labels, interpolator=sitk.sitkNearestNeighbor, extrapolate=False)
    present, inverse = np.unique(sitk.GetArrayViewFromImage(nearest), return_inverse=True)
    t1 = _lookup(T1_INTENSITY, present, T1_OTHER)[inverse].reshape(nearest.GetSize()[::-1])
    image = sitk.GetImageFromArray(t1)
    image.CopyInformation(nearest)
    return sitk.SmoothingRecursiveGaussian(image, ALIGN_SPACING_MM / 2)


def _load_subject(path: Path) -> _Subject:
    header.inspect_header(path, "label map")
    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"label map '{path.name}': expected a 3-D scalar label map")
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        raise InputError(f"label map '{path.name}': labels must be whole numbers")
    image = oriented(sitk.Cast(image, sitk.sitkInt16))
    labels = sitk.GetArrayFromImage(image)
    labels[(labels >= HEAD_LABELS_FROM) | (labels < 0)] = 0
    # CSF (24) runs down the spinal canal in these maps: the brain's extent is its tissue's.
    tissue = np.argwhere((labels > 0) & (labels != 24))
    if len(tissue) == 0:
        raise InputError(f"label map '{path.name}': holds no brain labels")
    low, high = tissue.min(axis=0), tissue.max(axis=0)
    centre = image.TransformContinuousIndexToPhysicalPoint(
        [float(c) for c in (low + high)[::-1] / 2]
    )
    margin = np.ceil(CROP_MARGIN_MM / np.asarray(image.GetSpacing())[::-1]).astype(int)
    low = np.maximum(low - margin, 0)
    high = np.minimum(high + margin + 1, labels.shape)
    cropped = sitk.GetImageFromArray(labels[low[0] : high[0], low[1] : high[1], low[2] : high[2]])
    cropped.SetSpacing(image.GetSpacing())
    cropped.SetDirection(image.GetDirection())
    cropped.SetOrigin(image.TransformIndexToPhysicalPoint([int(i) for i in low[::-1]]))
    return _Subject(
        cropped, np.asarray(centre), _pitch_deg(_brain_points_mm(cropped)), _coarse_t1(cropped)
    )


def _registration(shrink: Sequence[int], step: float) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMeanSquares()
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=step, minStep=1e-3, numberOfIterations=200, relaxationFactor=0.7
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel([s - 1 for s in shrink])
    return method


def _affine(reference: _Subject, subject: _Subject) -> sitk.Transform:
    """Affine transform mapping reference points to subject points, by mean squares between
    the T1-like coarse images: pitch from the brains' long axes, then rigid, then affine."""
    fixed, moving = reference.coarse, subject.coarse
    shrink = [2, 1] if min(fixed.GetSize()) >= 16 else [1]
    method = _registration(shrink, step=2.0)
    start = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    # The maps differ mostly by head pitch (up to ~40 degrees): rotating about the left-right
    # axis by the difference of the long axes starts the optimiser near the answer. The axis
    # has no direction, so both signs are tried and the better one kept.
    pitch = np.radians(subject.pitch_deg - reference.pitch_deg)
    candidates = []
    for angle in (pitch, -pitch):
        rigid = sitk.Euler3DTransform(start)
        rigid.SetRotation(float(angle), 0.0, 0.0)
        method.SetInitialTransform(rigid, inPlace=False)
        candidates.append((method.MetricEvaluate(fixed, moving), rigid))
    rigid = min(candidates, key=lambda c: c[0])[1]
    method.SetInitialTransform(rigid, inPlace=True)
    method.Execute(fixed, moving)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    # Smaller first steps for the 12 parameters: a large one can flip the matrix on small images.
    method = _registration(shrink, step=0.5)
    method.SetInitialTransform(affine, inPlace=True)
    method.Execute(fixed, moving)
    return affine


class BrainLabels:
    """Whole-head label maps as brain label maps on the model's working grid, kept in memory.

    Every map is read (NIfTI, FreeSurfer labels), oriented to LPS, stripped of the non-brain
    head labels (>= 500; CSF 24 is kept, as skull-stripped images keep sulcal CSF) and brought
    into the space of one reference subject: ``align="affine"`` (default) registers a T1-like
    rendering of each map to the reference's (12 parameters), as OASIS-space brains are
    affinely aligned before deformable registration; ``align="center"`` only centres each brain.
    The reference is the subject of median head pitch, so the common space has a typical pose.
    The box ``box_mm`` is centred on the reference brain's tissue and the maps are resampled
    onto ``working_grid``: the grid inference uses for such a box at ``spacing_mm`` (97×113×81
    at 2 mm). ``resample="gaussian"`` (default) votes among the labels near each sample (ITK's
    label Gaussian interpolator with SimpleITK's default kernel, about one input voxel): a mode
    filter, so thin structures keep their volume better than with ``"nearest"``, at no
    measurable extra cost.

    ``cache_dir``: the aligned maps are saved there and reused on the next load with the same
    files and settings (loading and aligning 20 maps takes about 50 s on one core).
    """

    def __init__(
        self,
        label_dir: str | os.PathLike,
        spacing_mm: float | None = 2.0,
        *,
        shape_multiple: int = 1,
        max_voxels: int | None = None,
        ids: Sequence[str] | None = None,
        align: str = "affine",
        resample: str = "gaussian",
        box_mm: Sequence[int] = BOX_MM,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        label_dir = Path(label_dir)
        if not label_dir.is_dir():
            raise InputError(f"label folder '{label_dir}' not found")
        if align not in ALIGN_MODES:
            raise InputError(f"align must be one of {', '.join(ALIGN_MODES)}; got '{align}'")
        if resample not in RESAMPLE_MODES:
            raise InputError(
                f"resample must be one of {', '.join(RESAMPLE_MODES)}; got '{resample}'"
            )
        paths = _nifti_paths(label_dir)
        if ids is not None:
            missing = sorted(set(ids) - set(paths))
            if missing:
                raise InputError(f"label maps not found in '{label_dir}': {', '.join(missing)}")
            paths = {i: paths[i] for i in sorted(set(ids))}
        if len(paths) < 2:
            raise InputError(
                f"'{label_dir}' needs at least two label maps (.nii or .nii.gz); found {len(paths)}"
            )
        self.ids: list[str] = list(paths)
        settings = {
            "spacing_mm": spacing_mm,
            "shape_multiple": shape_multiple,
            "max_voxels": max_voxels,
            "align": align,
            "resample": resample,
            "box_mm": [int(n) for n in box_mm],
        }
        self.settings = settings
        cache = self._cache_path(cache_dir, paths, settings)
        if cache is not None and cache.is_file():
            self._load_cache(cache)
            return
        subjects = {i: _load_subject(p) for i, p in paths.items()}
        pitches = sorted(self.ids, key=lambda i: subjects[i].pitch_deg)
        self.reference: str = pitches[(len(pitches) - 1) // 2]
        ref = subjects[self.reference]
        self.grid: Grid = working_grid(ref.centre, spacing_mm, shape_multiple, max_voxels, box_mm)
        self.maps: dict[str, np.ndarray] = {}
        for i, subject in subjects.items():
            if i == self.reference:
                transform: sitk.Transform = sitk.TranslationTransform(3)
            elif align == "affine":
                transform = _affine(ref, subject)
            else:
                shift = subject.centre - ref.centre
                transform = sitk.TranslationTransform(3, [float(v) for v in shift])
            moved = self.grid.resample(
                subject.labels, transform, RESAMPLE_MODES[resample], extrapolate=False
            )
            self.maps[i] = sitk.GetArrayFromImage(moved).astype(np.int16)
        if cache is not None:
            self._save_cache(cache)

    # -- access ---------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape (numpy order: S, P, L) of every map."""
        return tuple(self.grid.shape)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, subject: str) -> np.ndarray:
        """The label map (int16 FreeSurfer ids, numpy order) of one subject."""
        return self.maps[subject]

    def image(self, array: np.ndarray) -> sitk.Image:
        """``array`` (a map, or an image synthesised from one) as an image on the working grid,
        ready to write as NIfTI and register with ``riir register`` in physical space."""
        return self.grid.image(np.asarray(array))

    def split(self, n_test: int = 4, seed: int = 0) -> tuple[list[str], list[str]]:
        """(train_ids, test_ids): ``n_test`` subjects held out by a seeded permutation of the
        sorted ids, so the same folder and seed always give the same split."""
        if not 1 <= n_test <= len(self.ids) - 1:
            raise InputError(f"n_test must be between 1 and {len(self.ids) - 1}; got {n_test}")
        order = np.random.default_rng(seed).permutation(len(self.ids))
        test = sorted(self.ids[k] for k in order[:n_test])
        train = sorted(self.ids[k] for k in order[n_test:])
        return train, test

    # -- cache ----------------------------------------------------------------------------

    @staticmethod
    def _cache_path(
        cache_dir: str | os.PathLike | None, paths: dict[str, Path], settings: dict
    ) -> Path | None:
        if cache_dir is None:
            return None
        files = [[i, p.stat().st_size, p.stat().st_mtime_ns] for i, p in paths.items()]
        key = json.dumps({"version": CACHE_VERSION, "files": files, **settings}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return Path(cache_dir) / f"brain-labels-{digest}.npz"

    def _save_cache(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp,
            ids=np.array(self.ids),
            reference=self.reference,
            maps=np.stack([self.maps[i] for i in self.ids]),
            grid=json.dumps(asdict(self.grid)),
        )
        os.replace(tmp, path)

    def _load_cache(self, path: Path) -> None:
        with np.load(path) as data:
            self.ids = [str(i) for i in data["ids"]]
            self.reference = str(data["reference"])
            self.maps = dict(zip(self.ids, data["maps"], strict=True))
            grid = json.loads(str(data["grid"]))
        self.grid = Grid(**{k: tuple(v) for k, v in grid.items()})


# -- random deformations ------------------------------------------------------------------


def _interpolation_matrix(coarse: int, fine: int) -> np.ndarray:
    """(fine, coarse) linear interpolation weights, first and last samples aligned."""
    position = np.linspace(0.0, coarse - 1.0, fine)
    low = np.minimum(np.floor(position).astype(int), max(coarse - 2, 0))
    frac = position - low
    matrix = np.zeros((fine, coarse))
    matrix[np.arange(fine), low] = 1.0 - frac
    if coarse > 1:
        matrix[np.arange(fine), low + 1] += frac
    return matrix


def separable(field: np.ndarray, matrices: Sequence[np.ndarray]) -> np.ndarray:
    """A channel-first array (C, *coarse) through one (fine, coarse) weight matrix per axis:
    (C, *fine). One small matrix product per axis, far faster than ``map_coordinates``."""
    out = field
    for axis, matrix in enumerate(matrices):
        out = np.moveaxis(np.tensordot(matrix, out, axes=(1, 1 + axis)), 0, 1 + axis)
    return np.ascontiguousarray(out)


def upsample(field: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Linear (align-corners) upsampling of a channel-first array (C, *coarse) to (C, *shape)."""
    field = np.asarray(field, dtype=np.float32)
    matrices = [
        _interpolation_matrix(c, int(n)).astype(np.float32)
        for c, n in zip(field.shape[1:], shape, strict=True)
    ]
    return separable(field, matrices)


def _compose_self(u: np.ndarray) -> np.ndarray:
    """u + u∘(id + u) on u's own grid (one squaring step), linear interpolation."""
    shape = u.shape[1:]
    coords = np.indices(shape, dtype=np.float64) + u
    return u + np.stack([ndimage.map_coordinates(c, coords, order=1, mode="nearest") for c in u])


def random_displacement(
    shape: Sequence[int],
    rng: np.random.Generator,
    std_voxels: float,
    spacing_voxels: float = 8.0,
    steps: int = 5,
) -> np.ndarray:
    """A random smooth diffeomorphic displacement (D, *shape) in voxels.

    SynthMorph's recipe: a stationary velocity field of Gaussian noise (std ``std_voxels``) on
    control points every ``spacing_voxels``, integrated by scaling and squaring. Integration
    runs on the coarse control grid, where it costs nothing, and the result is upsampled
    linearly; the field is smooth on that scale, so little is lost.
    """
    shape = tuple(int(n) for n in shape)
    coarse = tuple(max(2, int(round((n - 1) / spacing_voxels)) + 1) for n in shape)
    # Velocity in coarse-grid voxels: one fine voxel is (c - 1) / (n - 1) coarse voxels.
    to_coarse = np.array([(c - 1) / max(n - 1, 1) for c, n in zip(coarse, shape, strict=True)])
    velocity = rng.standard_normal((len(shape), *coarse)) * std_voxels
    u = velocity * to_coarse.reshape(-1, *[1] * len(shape)) / 2**steps
    for _ in range(steps):
        u = _compose_self(u)
    u /= to_coarse.reshape(-1, *[1] * len(shape))
    return upsample(u, shape)


def warp_nearest(labels: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """``labels`` sampled at x + displacement(x), nearest neighbour, edges repeated."""
    shape = labels.shape
    flat = np.zeros(shape, dtype=np.intp)
    axes = np.ogrid[tuple(slice(0, n) for n in shape)]
    for axis, n in enumerate(shape):
        coord = np.rint(axes[axis] + displacement[axis])
        flat = flat * n + np.clip(coord, 0, n - 1).astype(np.intp)
    return labels.reshape(-1)[flat]


# -- image synthesis ----------------------------------------------------------------------

CONTRASTS = ("random", "t1")


@dataclass(frozen=True)
class SynthParams:
    """Ranges of the random draws, in the spirit of SynthMorph's generative model.

    Intensities are on a 0-255-like scale before normalisation; lengths are in working-grid
    voxels (2 mm at the default spacing). Each draw is uniform on [0, max] unless stated.
    """

    deform_std_voxels: float = 2.0  # std of the velocity field ~ U(0, max)
    deform_spacing_voxels: float = 8.0  # control-point spacing of the velocity field
    integration_steps: int = 5
    mean_range: tuple[float, float] = (25.0, 225.0)  # contrast="random": label mean ~ U(range)
    std_range: tuple[float, float] = (5.0, 25.0)  # contrast="random": label std ~ U(range)
    t1_jitter: float = 8.0  # contrast="t1": std of a Gaussian jitter of the table's means
    t1_std_range: tuple[float, float] = (2.0, 8.0)  # contrast="t1": label std ~ U(range)
    blur_sigma: float = 1.0  # Gaussian blur sigma ~ U(0, max)
    bias_std: float = 0.3  # std of the log bias field ~ U(0, max)
    bias_spacing_voxels: float = 20.0  # control-point spacing of the bias field
    noise_std: float = 0.05  # Gaussian noise std ~ U(0, max), relative to the image maximum
    gamma_std: float = 0.25  # image ** exp(g), g ~ N(0, gamma_std)


class BrainSynth:
    """Training pairs from ``labels`` restricted to the subjects ``ids``.

    ``pair(rng)`` draws two subjects (``intra_fraction`` of the time one subject twice),
    deforms each label map by its own random diffeomorphism, and synthesises one image per map.
    ``contrast="random"``: label means and stds uniform (SynthMorph); ``"t1"``: jittered
    T1-weighted means (``T1_INTENSITY``) with a black background, like skull-stripped T1 scans.
    ``shared_contrast=True`` gives both images of a pair the same label intensities (a
    mono-modal pair, what an MSE inner loss assumes); blur, bias, noise and gamma stay
    independent. Use ``False`` with NCC/NMI to train contrast invariance.
    """

    def __init__(
        self,
        labels: BrainLabels,
        ids: Sequence[str],
        seed: int = 0,
        *,
        contrast: str = "random",
        shared_contrast: bool = True,
        intra_fraction: float = 0.0,
        params: SynthParams = SynthParams(),
    ) -> None:
        if contrast not in CONTRASTS:
            raise InputError(f"contrast must be one of {', '.join(CONTRASTS)}; got '{contrast}'")
        unknown = sorted(set(ids) - set(labels.ids))
        if unknown:
            raise InputError(f"unknown subjects: {', '.join(unknown)}")
        if len(set(ids)) < 2 and intra_fraction < 1.0:
            raise InputError("inter-subject pairs need at least two subjects")
        self.ids = sorted(set(ids))
        self.shape = labels.shape
        self.contrast = contrast
        self.shared_contrast = shared_contrast
        self.intra_fraction = float(intra_fraction)
        self.params = params
        self.rng = np.random.default_rng(seed)
        # Compact label indices make the per-label intensity lookup a single np.take.
        self.label_ids = np.unique(np.concatenate([np.unique(labels[i]) for i in self.ids]))
        self.label_ids = self.label_ids.astype(np.int16)
        index_type = np.uint8 if len(self.label_ids) <= 256 else np.int32
        self._index = {
            i: np.searchsorted(self.label_ids, labels[i]).astype(index_type) for i in self.ids
        }
        self._t1 = _lookup(T1_INTENSITY, self.label_ids, T1_OTHER)

    def pair(self, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """One training pair: ``moving``/``fixed`` float32 images in [0, 1] and
        ``moving_labels``/``fixed_labels`` int16 FreeSurfer label maps, all of ``self.shape``.

        Only ``rng`` is drawn from (default: the generator seeded at construction), so a fixed
        seed gives fixed validation pairs.
        """
        rng = self.rng if rng is None else rng
        if rng.random() < self.intra_fraction:
            moving_id = fixed_id = self.ids[rng.integers(len(self.ids))]
        else:
            moving_id, fixed_id = (self.ids[k] for k in rng.choice(len(self.ids), 2, replace=False))
        contrast = self._contrast(rng)
        moving_index = self._deformed(moving_id, rng)
        moving = self._image(moving_index, contrast, rng)
        if not self.shared_contrast:
            contrast = self._contrast(rng)
        fixed_index = self._deformed(fixed_id, rng)
        fixed = self._image(fixed_index, contrast, rng)
        return {
            "moving": moving,
            "fixed": fixed,
            "moving_labels": self.label_ids[moving_index],
            "fixed_labels": self.label_ids[fixed_index],
        }

    def _contrast(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Per-label (means, stds) over ``self.label_ids``."""
        p, n = self.params, len(self.label_ids)
        if self.contrast == "random":
            return (
                rng.uniform(*p.mean_range, n).astype(np.float32),
                rng.uniform(*p.std_range, n).astype(np.float32),
            )
        means = self._t1 + rng.normal(0.0, p.t1_jitter, n).astype(np.float32)
        stds = rng.uniform(*p.t1_std_range, n).astype(np.float32)
        background = self.label_ids == 0
        means[background], stds[background] = 0.0, 0.0
        return np.maximum(means, 0.0), stds

    def _deformed(self, subject: str, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        displacement = random_displacement(
            self.shape,
            rng,
            rng.uniform(0.0, p.deform_std_voxels),
            p.deform_spacing_voxels,
            p.integration_steps,
        )
        return warp_nearest(self._index[subject], displacement)

    def _image(
        self, index: np.ndarray, contrast: tuple[np.ndarray, np.ndarray], rng: np.random.Generator
    ) -> np.ndarray:
        """Gaussian per label -> blur -> bias field -> noise -> gamma -> normalize."""
        p = self.params
        means, stds = contrast
        image = np.take(means, index) + np.take(stds, index) * rng.standard_normal(
            index.shape, dtype=np.float32
        )
        sigma = rng.uniform(0.0, p.blur_sigma)
        if sigma > 0.1:
            image = ndimage.gaussian_filter(image, sigma, mode="nearest")
        coarse = tuple(max(2, int(round((n - 1) / p.bias_spacing_voxels)) + 1) for n in self.shape)
        log_bias = rng.standard_normal((1, *coarse)) * rng.uniform(0.0, p.bias_std)
        image *= np.exp(upsample(log_bias, self.shape)[0])
        image = np.maximum(image, 0.0)
        image /= max(float(image.max()), 1e-6)
        image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(0, p.noise_std)
        image = np.clip(image, 0.0, None) ** np.float32(np.exp(rng.normal(0.0, p.gamma_std)))
        return normalize(image)
