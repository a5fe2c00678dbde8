"""Training-pair augmentation: flips, a small random affine, a random smooth deformation of
each image, an intensity gamma, and the swapped direction. Each acts on a prepared ``Pair``
(numpy, working grid) and draws from the caller's generator, so a pair depends on (seed,
iteration) alone.

Geometric augmentations move both images and both label maps by the same transform: the
deformation between them, which the network must find, stays what the data hold, while the
anatomy appears in poses and sizes the few training subjects do not show. The elastic
deformation is the exception: each image gets its own, so the pair shows two new shapes of
the anatomy and the deformation between them changes with them. A pair carrying a true field
(simulations) is left as it is, since its components would have to be moved too.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from model.training.datasets import Pair
from model.training.synthesis import separable, warp_nearest


def flipped(pair: Pair, rng: np.random.Generator) -> Pair:
    """The pair flipped along each axis with probability 1/2 (images and labels alike)."""
    axes = tuple(a for a in range(pair.fixed.ndim) if rng.random() < 0.5)
    if not axes or pair.truth is not None:
        return pair

    def flip(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.ascontiguousarray(np.flip(a, axes))

    return Pair(
        flip(pair.moving),
        flip(pair.fixed),
        flip(pair.moving_labels),
        flip(pair.fixed_labels),
        spacing=pair.spacing,
    )


def affine_augmented(pair: Pair, rng: np.random.Generator, rotate_deg: float, scale: float) -> Pair:
    """The pair moved by one random affine about the grid's centre: a rotation of up to
    ``rotate_deg`` degrees about each axis (one angle in 2-D, three in 3-D) and an isotropic
    scaling by a factor in [1 - scale, 1 + scale]. Images are resampled linearly, labels by
    nearest neighbour; outside the grid is 0 (background). The angles are in voxel units,
    which is exact on the isotropic working grids the shipped models train on."""
    if pair.truth is not None or (rotate_deg <= 0 and scale <= 0):
        return pair
    ndim = pair.fixed.ndim
    planes = [(0, 1)] if ndim == 2 else [(0, 1), (0, 2), (1, 2)]
    matrix = np.eye(ndim)
    for a, b in planes:
        angle = math.radians(rng.uniform(-rotate_deg, rotate_deg))
        rotation = np.eye(ndim)
        rotation[[a, a, b, b], [a, b, a, b]] = (
            math.cos(angle),
            -math.sin(angle),
            math.sin(angle),
            math.cos(angle),
        )
        matrix = rotation @ matrix
    matrix = matrix / rng.uniform(1 - scale, 1 + scale)  # output -> input: shrink to enlarge
    centre = (np.asarray(pair.fixed.shape) - 1) / 2
    offset = centre - matrix @ centre

    def move(a: np.ndarray | None, order: int) -> np.ndarray | None:
        if a is None:
            return None
        return ndimage.affine_transform(a, matrix, offset, order=order, mode="constant", cval=0)

    return Pair(
        move(pair.moving, 1),
        move(pair.fixed, 1),
        move(pair.moving_labels, 0),
        move(pair.fixed_labels, 0),
        spacing=pair.spacing,
    )


def _bspline_basis(n: int, spacing: int) -> np.ndarray:
    """(n, controls) weights of cubic B-spline control points every ``spacing`` voxels,
    one beyond each end, so the weights of every voxel sum to 1. The field is then a
    product of one small matrix per axis (``synthesis.separable``), smooth (C²) and cheap:
    4-7 ms for the three components on a 64³ crop, where a cubic zoom takes 80 ms for each."""
    u = np.arange(n) / spacing
    t = np.abs(u[:, None] - np.arange(-1, math.ceil(u[-1]) + 2)[None, :])
    return np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def elastic_augmented(pair: Pair, rng: np.random.Generator, amplitude: float, spacing: int) -> Pair:
    """Each image of the pair, with its labels, deformed by its own random smooth field:
    cubic B-spline control points every ``spacing`` voxels (8 bends a 64³ hippocampus crop
    in a few places: a shape change, not a texture), each component drawn uniformly from
    [-amplitude, amplitude] voxels (the field stays within it). Images are resampled
    linearly, labels by nearest neighbour, the edge repeated outside the grid (the crops'
    own padding)."""
    if pair.truth is not None or amplitude <= 0:
        return pair
    shape = pair.fixed.shape
    bases = [_bspline_basis(n, spacing) for n in shape]
    grid = np.indices(shape, dtype=np.float64)
    size = (len(shape), *(b.shape[1] for b in bases))

    def bend(image: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        displacement = separable(rng.uniform(-amplitude, amplitude, size=size), bases)
        where = grid + displacement
        moved = ndimage.map_coordinates(image, where, order=1, mode="nearest").astype(np.float32)
        return moved, None if labels is None else warp_nearest(labels, displacement)

    moving, moving_labels = bend(pair.moving, pair.moving_labels)
    fixed, fixed_labels = bend(pair.fixed, pair.fixed_labels)
    return Pair(moving, fixed, moving_labels, fixed_labels, spacing=pair.spacing)


def gamma_augmented(pair: Pair, rng: np.random.Generator, gamma: float) -> Pair:
    """Each image's intensities (in [0, 1]) raised to its own power exp(u), u uniform in
    [-gamma, gamma]: the contrast changes between images and scanners that MRI shows, which a
    learned encoder should not mistake for anatomy."""
    if gamma <= 0:
        return pair

    def contrast(image: np.ndarray) -> np.ndarray:
        power = math.exp(rng.uniform(-gamma, gamma))
        return np.power(np.clip(image, 0.0, 1.0), power).astype(np.float32)

    return Pair(
        contrast(pair.moving),
        contrast(pair.fixed),
        pair.moving_labels,
        pair.fixed_labels,
        truth=pair.truth,
        spacing=pair.spacing,
    )


def reversed_pair(pair: Pair) -> Pair:
    """Moving and fixed swapped."""
    return Pair(
        pair.fixed, pair.moving, pair.fixed_labels, pair.moving_labels, spacing=pair.spacing
    )
