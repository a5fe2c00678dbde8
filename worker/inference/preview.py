"""The PNG preview: fixed / moving / warped / difference / deformation grid, middle slices."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

GRID_EVERY = 6  # voxels between drawn grid lines


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
    ax.set_aspect("equal")


def write_preview(
    path: Path, fixed: np.ndarray, moving: np.ndarray, warped: np.ndarray, phi: np.ndarray
) -> Path:
    """Arrays squeezed to 2-D or 3-D in numpy order on the fixed grid, intensities in [0, 1];
    ``phi`` (D, *shape) the voxel displacement on that grid."""
    views = _middle_slices(fixed)
    titles = ("fixed", "moving", "warped", "|fixed - warped|", "deformation")
    fig, axes = plt.subplots(len(views), 5, figsize=(15, 3.2 * len(views)), squeeze=False)
    for row, (in_plane, index) in zip(axes, views, strict=True):
        images = (fixed[index], moving[index], warped[index], np.abs(fixed - warped)[index])
        for ax, image, cmap in zip(row[:4], images, ("gray",) * 3 + ("magma",), strict=True):
            ax.imshow(image, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        _draw_grid(row[4], np.stack([phi[d][index] for d in in_plane]))
        for ax, title in zip(row, titles, strict=True):
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
    return path
