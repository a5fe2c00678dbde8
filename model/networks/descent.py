"""Classical registration by smoothed gradient descent on the inner loss.

The un-learned optimiser that RIIR replaces: phi <- G_sigma * (phi - step ∇_phi L_inner),
a Demons-like scheme. It checks the conventions of the gradient path (a known shift must be
recovered through ``inner_gradient`` and ``warp``) and serves as a reference baseline.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.networks.configs import DescentConfig
from model.networks.losses import inner_gradient


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, *S) with ``sigma`` voxels (replicate borders)."""
    if sigma <= 0:
        return x
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    spatial = x.dim() - 2
    conv = F.conv2d if spatial == 2 else F.conv3d
    channels = x.shape[1]
    for d in range(spatial):
        shape = [1] * spatial
        shape[d] = kernel.numel()
        weight = kernel.view(1, 1, *shape).repeat(channels, 1, *[1] * spatial)
        pad = [0, 0] * spatial
        pad[2 * (spatial - 1 - d)] = pad[2 * (spatial - 1 - d) + 1] = radius
        x = conv(F.pad(x, pad, mode="replicate"), weight, groups=channels)
    return x


def descend(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    inner_loss: str = "mse",
    iterations: int = 100,
    step: float = 0.5,
    sigma: float = 2.0,
    ncc_window: int = 9,
) -> torch.Tensor:
    """Displacement (B, D, *S) in voxels found by smoothed gradient descent.

    The gradient is normalised so its largest vector moves ``step`` voxels, decaying
    linearly to zero: the similarity's raw gradient scale varies by orders of magnitude
    between losses and images, a step in voxels does not.
    """
    phi = fixed.new_zeros(fixed.shape[0], fixed.dim() - 2, *fixed.shape[2:])
    for i in range(iterations):
        grad = inner_gradient(inner_loss, moving, fixed, phi, ncc_window=ncc_window)
        scale = grad.flatten(1).norm(dim=0).amax().clamp_min(1e-12)  # largest vector length
        phi = gaussian_smooth(phi - step * (1 - i / iterations) * grad / scale, sigma)
    return phi


class Descent(nn.Module):
    """``descend`` behind the common architecture interface, so the classical optimiser runs
    through the same checkpoints, engine and artifacts as the learned ones."""

    def __init__(self, config: DescentConfig):
        super().__init__()
        self.config = config

    def forward(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        steps: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        return_all: bool = True,
        inner_loss: str | None = None,
    ) -> list[torch.Tensor]:
        cfg = self.config
        phi = descend(
            moving,
            fixed,
            inner_loss or cfg.inner_loss,
            steps or cfg.steps,
            cfg.step,
            cfg.sigma,
            cfg.ncc_window,
        )
        if progress is not None:
            progress(steps or cfg.steps, steps or cfg.steps)
        return [phi]
