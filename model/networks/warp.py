"""Warping: the one owner of ``grid_sample``'s coordinate conventions.

A displacement ``phi`` is a tensor (B, D, *spatial) in voxels of its grid; channel d moves
along spatial axis d (the tensor's axis 2 + d). Warping samples the moving image at
``x + phi(x)``: ``(moving ∘ phi)(x) = moving(x + phi(x))``.

``grid_sample`` wants normalised coordinates in [-1, 1] with the last dimension in reverse
axis order (x = last spatial axis). With ``align_corners=True``, -1 and 1 are the centres of
the first and last voxels, so voxel index i maps to ``2 i / (n - 1) - 1``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

_MODES = {"linear": "bilinear", "nearest": "nearest"}


@lru_cache(maxsize=16)
def _identity(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Voxel coordinates of every voxel: (1, D, *shape)."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij")).unsqueeze(0)


def identity_grid(
    shape: tuple[int, ...], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    return _identity(tuple(shape), torch.device(device), dtype)


def _normalised_grid(displacement: torch.Tensor) -> torch.Tensor:
    """Voxel displacement (B, D, *S) -> grid_sample grid (B, *S, D), reversed axis order."""
    shape = displacement.shape[2:]
    coords = identity_grid(tuple(shape), displacement.device, displacement.dtype) + displacement
    scale = torch.tensor(
        [2.0 / max(n - 1, 1) for n in shape], device=displacement.device, dtype=displacement.dtype
    ).view(1, -1, *[1] * len(shape))
    grid = coords * scale - 1.0
    return grid.movedim(1, -1).flip(-1)


def warp(
    image: torch.Tensor,
    displacement: torch.Tensor,
    mode: str = "linear",
    padding_mode: str = "border",
) -> torch.Tensor:
    """Resample ``image`` (B, C, *S) at ``x + displacement(x)``.

    ``border`` padding repeats edge voxels rather than pulling in zeros, so voxels that move
    out of the field of view do not create artificial edges for the similarity to chase.
    """
    grid = _normalised_grid(displacement)
    return F.grid_sample(
        image, grid, mode=_MODES[mode], padding_mode=padding_mode, align_corners=True
    )


def resize(x: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Values (B, C, *S) on a grid of the same field of view with ``shape`` voxels.

    Down (every axis no longer): average pooling. Up: linear interpolation with the voxel
    *cells* aligned (``align_corners=False``, edges replicated), the geometry of that pooling,
    where one coarse voxel covers ``s`` fine ones. Every move of a field between grids in the
    networks goes through here.
    """
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    if all(n <= m for n, m in zip(shape, x.shape[2:], strict=True)):
        size: Any = tuple(shape)  # torch's stubs want a tuple of exactly 2 or 3
        if x.dim() == 4:
            return F.adaptive_avg_pool2d(x, size)
        return F.adaptive_avg_pool3d(x, size)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(x, size=tuple(shape), mode=mode, align_corners=False)


def resize_displacement(displacement: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Displacement (B, D, *S) on a grid of the same field of view with ``shape`` voxels, in
    that grid's voxels: ``resize``, with values scaled by ``n_new / n_old`` along each axis
    (one old voxel is that many new ones when the cells are aligned)."""
    old = displacement.shape[2:]
    if tuple(old) == tuple(shape):
        return displacement
    factors = torch.tensor(
        [n / o for n, o in zip(shape, old, strict=True)],
        device=displacement.device,
        dtype=displacement.dtype,
    )
    return resize(displacement, shape) * factors.view(1, -1, *[1] * len(shape))


def warp_window(
    image: torch.Tensor,
    displacement: torch.Tensor,
    origin: tuple[int, ...],
    mode: str = "linear",
    padding_mode: str = "border",
) -> torch.Tensor:
    """``warp`` on a window of ``image``'s grid: ``displacement`` (B, D, *s) covers the voxels
    ``origin … origin + s - 1``; the result (B, C, *s) samples the whole ``image`` at
    ``x + displacement(x)`` there (so a window can look outside itself)."""
    shape, window = image.shape[2:], displacement.shape[2:]
    offset = torch.tensor(origin, device=displacement.device, dtype=displacement.dtype)
    coords = (
        identity_grid(tuple(window), displacement.device, displacement.dtype)
        + offset.view(1, -1, *[1] * len(window))
        + displacement
    )
    scale = torch.tensor(
        [2.0 / max(n - 1, 1) for n in shape], device=displacement.device, dtype=displacement.dtype
    ).view(1, -1, *[1] * len(window))
    grid = (coords * scale - 1.0).movedim(1, -1).flip(-1)
    return F.grid_sample(
        image, grid, mode=_MODES[mode], padding_mode=padding_mode, align_corners=True
    )
