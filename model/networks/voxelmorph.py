"""VoxelMorph (Balakrishnan et al., IEEE TMI 2019): a U-Net that predicts the displacement.

The baseline of the RIIR paper's comparison, behind the common interface: ``forward(moving,
fixed)`` returns ``[phi]``, one displacement (B, D, *S) in voxels. The network is VoxelMorph's
``vm2``: an encoder of 3×3(×3) convolutions with LeakyReLU(0.2), each level followed by max
pooling, a decoder that upsamples and concatenates the encoder's features, a few full-resolution
convolutions and a 3×3(×3) convolution to D channels. The displacement is used as is (no
velocity integration), as in the paper's comparison.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from model.networks.configs import VoxelMorphConfig
from model.networks.conv import conv as conv_class


class ConvBlock(nn.Module):
    def __init__(self, spatial_dims: int, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = conv_class(spatial_dims)(channels_in, channels_out, 3, padding=1)
        self.activation = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(x))


class VoxelMorph(nn.Module):
    def __init__(self, config: VoxelMorphConfig):
        super().__init__()
        if len(config.decoder) < len(config.encoder):
            raise ValueError("the decoder needs at least one convolution per encoder level")
        self.config = config
        d = config.spatial_dims
        levels = len(config.encoder)
        self.shape_multiple = 2**levels
        self.encoder = nn.ModuleList()
        channels = 2  # moving and fixed, concatenated
        for width in config.encoder:
            self.encoder.append(ConvBlock(d, channels, width))
            channels = width
        # Each decoder level upsamples and concatenates the output of the encoder level of that
        # resolution (before its pooling): deepest first.
        self.decoder = nn.ModuleList()
        for width, skip in zip(config.decoder[:levels], config.encoder[::-1], strict=True):
            self.decoder.append(ConvBlock(d, channels, width))
            channels = width + skip
        self.remaining = nn.ModuleList()
        for width in config.decoder[levels:]:
            self.remaining.append(ConvBlock(d, channels, width))
            channels = width
        conv = conv_class(d)
        self.flow = conv(channels, d, 3, padding=1)
        # VoxelMorph draws these from N(0, 1e-5); zero makes the untrained network the identity.
        nn.init.zeros_(self.flow.weight)
        nn.init.zeros_(self.flow.bias)
        self.pool = getattr(nn, f"MaxPool{d}d")(2)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        steps: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        return_all: bool = True,
        inner_loss: str | None = None,
    ) -> list[torch.Tensor]:
        """``[phi]``: the displacement (B, D, *S) in voxels. ``steps`` and ``inner_loss`` do
        not apply (one prediction, no inner loss); they are accepted for the common interface."""
        shape = fixed.shape[2:]
        if any(n % self.shape_multiple for n in shape):
            raise ValueError(
                f"VoxelMorph needs every axis to be a multiple of "
                f"{self.shape_multiple}; got {tuple(shape)}"
            )
        x = torch.cat([moving, fixed], 1)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        for block in self.decoder:
            x = torch.cat([self.upsample(block(x)), skips.pop()], 1)
        for block in self.remaining:
            x = block(x)
        phi = self.flow(x)
        if progress is not None:
            progress(1, 1)
        return [phi]
