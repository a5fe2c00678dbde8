"""A small shared feature encoder E and the analytic gradient of the feature MSE.

E runs once per image (fixed and moving alike, shared weights); the inner loss of the
coarse-to-fine RIIR (``model/networks/c2f.py``) is then

    L_feat(phi) = 1/C Σ_c mean_x (E_m,c(x + phi(x)) - E_f,c(x))²

whose gradient with respect to phi is 2/C Σ_c (E_m,c ∘ phi - E_f,c) (∇E_m,c) ∘ phi
(``model.networks.losses.inner_gradient("mse", …)`` with C channels). Written with the
central-difference image gradient rather than autograd, it is an ordinary differentiable function
of E: training learns the features through the cell's input without second derivatives.

Two encoders: the plain one (two convolutions, a receptive field of a few voxels: it can only
sharpen edges) and ``FeatureUNet`` (``depth`` poolings below the features' grid and back, with
skips: a receptive field of tens of voxels, enough to tell where the anatomy is). Either may
carry a segmentation head (a 1×1 convolution to 1 + K class logits) that an auxiliary loss
trains where labels exist, so the features — and the head's probabilities, which join them —
carry anatomy, and the feature gradient pulls structure onto structure.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from model.networks.conv import conv as conv_class
from model.networks.losses import spatial_gradient
from model.networks.warp import warp


def _block(conv: type[nn.Module], inputs: int, outputs: int, stride: int) -> nn.Sequential:
    """conv 3 (stride) → LeakyReLU → conv 3 → LeakyReLU."""
    return nn.Sequential(
        conv(inputs, outputs, 3, stride=stride, padding=1),
        nn.LeakyReLU(0.2),
        conv(outputs, outputs, 3, padding=1),
        nn.LeakyReLU(0.2),
    )


class FeatureEncoder(nn.Module):
    """conv (stride s) → LeakyReLU → conv → LeakyReLU → 1×1 conv: C features at 1/s of the
    grid. The last layer is linear so features may take either sign, like an image."""

    def __init__(self, spatial_dims: int, channels: int = 8, stride: int = 2):
        super().__init__()
        conv = conv_class(spatial_dims)
        self.stride = stride
        self.net = nn.Sequential(*_block(conv, 1, channels, stride), conv(channels, channels, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


class FeatureUNet(nn.Module):
    """A small U-Net: ``depth`` stride-2 levels below the features' grid (1/``stride``), each
    two 3×3 convolutions, then back up with a skip per level; the last layer is linear."""

    def __init__(self, spatial_dims: int, channels: int = 8, stride: int = 2, depth: int = 2):
        super().__init__()
        conv = conv_class(spatial_dims)
        self.stride = stride
        self.stem = _block(conv, 1, channels, stride)
        widths = [channels * min(2**i, 4) for i in range(depth + 1)]
        self.down = nn.ModuleList(_block(conv, widths[i], widths[i + 1], 2) for i in range(depth))
        self.up = nn.ModuleList(
            nn.Sequential(
                conv(widths[i + 1] + widths[i], widths[i], 3, padding=1), nn.LeakyReLU(0.2)
            )
            for i in reversed(range(depth))
        )
        self.out = conv(channels, channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image)
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(x)
        for up, skip in zip(self.up, reversed(skips), strict=True):
            # Odd sizes halve with rounding up: interpolate to the skip's size, not ×2.
            x = F.interpolate(x, size=skip.shape[2:], mode="nearest")
            x = up(torch.cat([x, skip], 1))
        return self.out(x)


def build_encoder(
    spatial_dims: int, channels: int, stride: int, depth: int
) -> FeatureEncoder | FeatureUNet:
    """The plain encoder (``depth`` 0) or the U-Net."""
    if depth == 0:
        return FeatureEncoder(spatial_dims, channels, stride)
    return FeatureUNet(spatial_dims, channels, stride, depth)


def segmentation_head(spatial_dims: int, channels: int, classes: int) -> nn.Module:
    """1×1 convolution from the features to ``classes`` logits (background first)."""
    return conv_class(spatial_dims)(channels, classes, 1)


def feature_gradient_terms(
    moving_features: torch.Tensor, fixed_features: torch.Tensor, phi: torch.Tensor
) -> torch.Tensor:
    """Each channel's term of the feature MSE's gradient, (B, C, D, *S): 2 (E_m∘phi - E_f)
    (∇E_m)∘phi, phi in voxels of the features' grid. The gradient of the MSE over any set of
    channels is the mean of their terms, so a caller that needs several sets (the c2f
    cell's ``anatomy_gradient``) warps the features once. Differentiable in the features;
    phi is taken as given."""
    phi = phi.detach()
    channels = moving_features.shape[1]
    residual = warp(moving_features, phi) - fixed_features  # (B, C, *S)
    grad_m = spatial_gradient(moving_features).flatten(1, 2)  # (B, C·D, *S)
    warped_grad = warp(grad_m, phi).unflatten(1, (channels, -1))  # (B, C, D, *S)
    return 2.0 * residual.unsqueeze(2) * warped_grad


def feature_gradient(
    moving_features: torch.Tensor, fixed_features: torch.Tensor, phi: torch.Tensor
) -> torch.Tensor:
    """∂L_feat/∂phi per voxel (B, D, *S): 2/C Σ_c (E_m∘phi - E_f)(∇E_m)∘phi, the mean of
    ``feature_gradient_terms`` over all channels."""
    return feature_gradient_terms(moving_features, fixed_features, phi).mean(1)


def local_correlation(warped: torch.Tensor, fixed: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, (2r+1)^D, *S): at each voxel x, the cosine similarity of the fixed features at x
    with the warped moving features at x + o, for every offset o in [-r, r]^D (offsets in
    the order of ``itertools.product``; 0 beyond the grid). RAFT's correlation volume, kept
    to a neighbourhood of one grid: it tells the cell where matching structure lies within
    r voxels, where the similarity's gradient only says which way is downhill. Cosine, so
    its scale does not depend on how large the learned features grow."""
    fixed = F.normalize(fixed, dim=1)
    padded = F.pad(F.normalize(warped, dim=1), [radius] * 2 * (fixed.dim() - 2))
    shape = fixed.shape[2:]
    planes = []
    for offset in itertools.product(range(2 * radius + 1), repeat=len(shape)):
        window = padded[(..., *(slice(o, o + n) for o, n in zip(offset, shape, strict=True)))]
        planes.append((fixed * window).sum(1))
    return torch.stack(planes, 1)
