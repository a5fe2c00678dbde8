"""GraDIRN (Qiu et al., "Embedding gradient-based optimization in image registration
networks", MICCAI 2022): gradient descent on the similarity with a learned regulariser.

Coarse to fine over ``resolutions`` levels, ``iterations`` steps each:

    phi <- phi - tau_k ∇_phi L_sim(I_mov ∘ phi, I_fix) - R_r(phi, I_mov ∘ phi, I_fix)

``tau_k`` is a learned step size per iteration and ``R_r`` a small CNN per resolution (weights
shared across that resolution's iterations) standing for the gradient of a learned regulariser.
Unlike RIIR there is no hidden state and the similarity gradient enters linearly, not through a
network. Between levels ``phi`` is upsampled and its voxel units doubled
(``model.networks.warp.resize_displacement``). The similarity gradient is
``model.networks.losses.inner_gradient``: the same scaling as RIIR's input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.networks.configs import GraDIRNConfig
from model.networks.conv import conv as conv_class
from model.networks.losses import inner_gradient
from model.networks.warp import resize_displacement, warp


class Regulariser(nn.Module):
    """R_r: conv-LeakyReLU ×2 then a conv to D channels, on [phi, I_mov ∘ phi, I_fix]."""

    def __init__(self, spatial_dims: int, hidden: int):
        super().__init__()
        conv = conv_class(spatial_dims)
        self.layers = nn.ModuleList(
            [
                conv(spatial_dims + 2, hidden, 3, padding=1),
                conv(hidden, hidden, 3, padding=1),
            ]
        )
        self.out = conv(hidden, spatial_dims, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # starts as plain gradient descent
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
        return self.out(x)


class GraDIRN(nn.Module):
    def __init__(self, config: GraDIRNConfig):
        super().__init__()
        self.config = config
        self.shape_multiple = 2 ** (config.resolutions - 1)
        self.regularisers = nn.ModuleList(
            Regulariser(config.spatial_dims, config.hidden_channels)
            for _ in range(config.resolutions)
        )
        self.step_sizes = nn.Parameter(torch.full((config.steps,), float(config.initial_step)))

    def _pyramid(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Coarsest first; each level halves the grid (average pooling)."""
        pool = F.avg_pool2d if image.dim() == 4 else F.avg_pool3d
        levels = [image]
        for _ in range(self.config.resolutions - 1):
            levels.append(pool(levels[-1], 2))
        return levels[::-1]

    def forward(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        steps: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        return_all: bool = True,
        inner_loss: str | None = None,
    ) -> list[torch.Tensor]:
        """Displacements (B, D, *S) in voxels of the full grid after every iteration (only the
        last unless ``return_all``). ``steps`` must be the trained ``resolutions × iterations``:
        each iteration has its own step size."""
        cfg = self.config
        if steps is not None and steps != cfg.steps:
            raise ValueError(f"GraDIRN runs its trained {cfg.steps} iterations; got {steps}")
        shape = tuple(fixed.shape[2:])
        if any(n % self.shape_multiple for n in shape):
            raise ValueError(
                f"GraDIRN needs every axis to be a multiple of {self.shape_multiple}; got {shape}"
            )
        inner_loss = inner_loss or cfg.inner_loss
        phi: torch.Tensor | None = None
        out: list[torch.Tensor] = []
        k = 0
        for level, (m, f) in enumerate(
            zip(self._pyramid(moving), self._pyramid(fixed), strict=True)
        ):
            level_shape = tuple(f.shape[2:])
            phi = (
                f.new_zeros(f.shape[0], len(level_shape), *level_shape)
                if phi is None
                else resize_displacement(phi, level_shape)
            )
            for _ in range(cfg.iterations):
                grad = inner_gradient(inner_loss, m, f, phi.detach(), ncc_window=cfg.ncc_window)
                update = self.regularisers[level](torch.cat([phi, warp(m, phi), f], 1))
                phi = phi - self.step_sizes[k] * grad - update
                k += 1
                if return_all or k == cfg.steps:
                    out.append(resize_displacement(phi, shape))
                if progress is not None:
                    progress(k, cfg.steps)
        return out
