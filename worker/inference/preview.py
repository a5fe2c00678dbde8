"""The PNG preview: fixed / moving / warped, the differences before and after, the deformation
grid and the Jacobian with folding marked, middle slices; drawn in millimetres (voxel aspect
from the spacing) with the patient's directions (R/L, A/P, S/I) at the edges of each view."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

GRID_EVERY = 6  # voxels between drawn grid lines
# LPS: +x is the patient's left, +y posterior, +z superior; each letter pair is (-, +).
LPS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))
COLUMNS = (
    "fixed",
    "moving",
    "warped",
    "|fixed − moving| before",
    "|fixed − warped| after",
    "deformation",
    "Jacobian",
)


def axis_letters(direction: Sequence[float], ndim: int) -> list[tuple[str, str]]:
    """(letter at index 0, letter at the last index) per numpy axis, from an ITK row-major
    ``direction`` (column j: the LPS direction of ITK index axis j = numpy axis ndim-1-j)."""
    matrix = np.asarray(direction, dtype=np.float64).reshape(ndim, ndim)
    letters = []
    for axis in range(ndim):
        column = matrix[:, ndim - 1 - axis]
        k = int(np.argmax(np.abs(column)))  # the LPS axis this image axis mostly runs along
        low, high = LPS_LETTERS[k]
        letters.append((low, high) if column[k] > 0 else (high, low))
    return letters


def _middle_slices(volume: np.ndarray) -> list[tuple[list[int], tuple]]:
    """(in-plane axes, index) per view: one view of a 2-D image, three of a 3-D volume."""
    if volume.ndim == 2:
        return [([0, 1], (slice(None), slice(None)))]
    views = []
    for axis in range(3):
        index = tuple(n // 2 if a == axis else slice(None) for a, n in enumerate(volume.shape))
        views.append(([a for a in range(3) if a != axis], index))
    return views


def _draw_grid(ax: plt.Axes, phi: np.ndarray) -> None:
    """Grid lines x + phi(x) of the in-plane displacement phi (2, H, W), in voxels."""
    h, w = phi.shape[1:]
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    rows, cols = rows + phi[0], cols + phi[1]
    for r in range(0, h, GRID_EVERY):
        ax.plot(cols[r], rows[r], color="tab:blue", lw=0.6)
    for c in range(0, w, GRID_EVERY):
        ax.plot(cols[:, c], rows[:, c], color="tab:blue", lw=0.6)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)


def _contours(ax: plt.Axes, labels: np.ndarray, color: str) -> None:
    for value in np.unique(labels):
        if value != 0 and (labels == value).any() and not (labels == value).all():
            ax.contour(labels == value, levels=[0.5], colors=color, linewidths=0.8)


def _orient(ax: plt.Axes, rows: tuple[str, str], cols: tuple[str, str], flip: bool) -> None:
    top, bottom = rows[::-1] if flip else rows
    style: dict[str, Any] = {
        "transform": ax.transAxes,
        "color": "yellow",
        "fontsize": 8,
        "weight": "bold",
        "bbox": {"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0},  # on white too
    }
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    ax.text(0.02, 0.5, cols[0], ha="left", va="center", **style)
    ax.text(0.98, 0.5, cols[1], ha="right", va="center", **style)


def write_preview(
    path: Path,
    fixed: np.ndarray,
    moving: np.ndarray,
    warped: np.ndarray,
    phi: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    direction: Sequence[float] | None = None,
    det: np.ndarray | None = None,
    labels: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Arrays squeezed to 2-D or 3-D in numpy order on the fixed grid, intensities in [0, 1];
    ``moving`` already on that grid (the initial alignment); ``phi`` (D, *shape) the voxel
    displacement. ``spacing`` (numpy order, mm) and ``direction`` (ITK row-major, as
    ``GetDirection``) of the fixed grid; ``det`` the Jacobian determinant; ``labels`` the fixed
    and the warped label maps."""
    ndim = fixed.ndim
    spacing = tuple(spacing) if spacing is not None else (1.0,) * ndim
    identity = tuple(np.eye(ndim).ravel().tolist())
    letters = axis_letters(direction if direction is not None else identity, ndim)
    det = det if det is not None else np.ones_like(fixed)
    views = _middle_slices(fixed)
    fig, axes = plt.subplots(
        len(views), len(COLUMNS), figsize=(2.6 * len(COLUMNS), 2.9 * len(views)), squeeze=False
    )
    folded = int((det <= 0).sum())
    for row, (in_plane, index) in zip(axes, views, strict=True):
        r, c = in_plane
        # Superior or anterior at the top where the rows run that way (the usual reading).
        flip = letters[r][1] in ("S", "A")

        def shown(image: np.ndarray, flip: bool = flip) -> np.ndarray:
            return image[::-1] if flip else image

        gray = {"cmap": "gray", "vmin": 0, "vmax": 1, "interpolation": "nearest"}
        hot = {"cmap": "magma", "vmin": 0, "vmax": 1, "interpolation": "nearest"}
        for ax, image, style in (
            (row[0], fixed, gray),
            (row[1], moving, gray),
            (row[2], warped, gray),
            (row[3], np.abs(fixed - moving), hot),
            (row[4], np.abs(fixed - warped), hot),
        ):
            ax.imshow(shown(image[index]), **style)
        if labels is not None:
            fixed_labels, warped_labels = (shown(lab.reshape(fixed.shape)[index]) for lab in labels)
            _contours(row[0], fixed_labels, "lime")
            _contours(row[2], fixed_labels, "lime")
            _contours(row[2], warped_labels, "magenta")
        grid = np.stack([phi[d][index] for d in in_plane])
        if flip:  # the rows reversed: so are their displacements
            grid = np.stack([-grid[0][::-1], grid[1][::-1]])
        _draw_grid(row[5], grid)
        jac = shown(det[index])
        image = row[6].imshow(jac, cmap="RdBu_r", vmin=0, vmax=2, interpolation="nearest")
        folds = np.ma.masked_where(jac > 0, np.ones_like(jac))
        row[6].imshow(folds, cmap="autumn", vmin=0, vmax=1, interpolation="nearest")
        fig.colorbar(image, ax=row[6], fraction=0.046, pad=0.02)
        for ax in row:
            ax.set_aspect(spacing[r] / spacing[c])  # millimetres, not voxels
            ax.set_xticks([])
            ax.set_yticks([])
            _orient(ax, letters[r], letters[c], flip)
    for ax, title in zip(axes[0], COLUMNS, strict=True):
        ax.set_title(title, fontsize=9)
    axes[0][6].set_title(f"Jacobian, folding (|J| ≤ 0) in yellow: {folded} vx", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
    return path
