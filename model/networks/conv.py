"""The convolution layers of the networks: ``nn.Conv2d``, and a ``Conv3d`` that is fast on CPUs.

PyTorch's CPU backend sends a 3-D convolution with fewer than 22 input channels down its
unvectorised path (``slow_conv3d``, ``slow_conv_dilated3d``) and one with 22 or more to
oneDNN: a 16 → 16, 3×3×3 convolution on a 32³ grid takes ~80 ms, the same with 22 input
channels ~8 ms (torch 2.13, 2 threads). ``Conv3d`` pads its input and weight with zero
channels up to that width on the CPU, which changes no output (up to float rounding) and no
parameter: checkpoints load as they are.

Padding pays only where the slow path is slow. Measured (2 threads): it loses on 1- and
2-channel inputs (a 1 → 8 stride-2 stem on 64³: 2.8 ms plain, 23.6 ms padded), on small
output grids (6 → 16 on 16³: 2.2 against 8.9 ms) and for 1×1×1 kernels; it wins from 4 input
channels on 32³ outputs (4 → 16: 15.0 against 7.6 ms; 8 → 8: 29 against 8 ms). Hence the
limits below.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN_MIN_CHANNELS = 22  # the input width from which the CPU backend uses oneDNN
PAD_FROM_CHANNELS = 4  # narrower inputs are as fast unpadded
PAD_FROM_VOXELS = 32**3  # output voxels below which the unpadded path is faster


class Conv3d(nn.Conv3d):
    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        missing = ONEDNN_MIN_CHANNELS - input.shape[1]
        output_voxels = math.prod(n // s for n, s in zip(input.shape[2:], self.stride, strict=True))
        if (
            missing > 0
            and input.shape[1] >= PAD_FROM_CHANNELS
            and output_voxels >= PAD_FROM_VOXELS
            and input.device.type == "cpu"
            and self.groups == 1
            and self.padding_mode == "zeros"
            and tuple(weight.shape[2:]) != (1, 1, 1)
        ):
            input = F.pad(input, (0, 0, 0, 0, 0, 0, 0, missing))
            weight = F.pad(weight, (0, 0, 0, 0, 0, 0, 0, missing))
        return super()._conv_forward(input, weight, bias)


def conv(spatial_dims: int) -> type[nn.Module]:
    """The convolution class for 2-D or 3-D networks."""
    return Conv3d if spatial_dims == 3 else nn.Conv2d
