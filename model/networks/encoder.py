"""A small shared feature encoder E and the analytic gradient of the feature MSE.

E runs once per image (fixed and moving alike, shared weights); the inner loss of the
coarse-to-fine RIIR (``model/networks/c2f.py``) is then

    L_feat(phi) = 1/C Σ_c mean_x (E_m,c(x + phi(x)) - E_f,c(x))²

whose gradient with respect to phi is 2/C Σ_c (E_m,c ∘ phi - E_f,c) (∇E_m,c) ∘ phi
(``model.networks.losses.inner_gradient("mse", …)`` with C channels). Written with the
central-difference image gradient rather than autograd, it is an ordinary differentiable function
of E: training learns the features through the cell's input without second derivatives.
"""

from __future__ import annotations

import torch
from torch import nn

from model.networks.losses import spatial_gradient
from model.networks.warp import warp


def _conv(spatial_dims: int) -> type[nn.Module]:
    return getattr(nn, f"Conv{spatial_dims}d")


class FeatureEncoder(nn.Module):
    """conv (stride s) → LeakyReLU → conv → LeakyReLU → 1×1 conv: C features at 1/s of the
    grid. The last layer is linear so features may take either sign, like an image."""

    def __init__(self, spatial_dims: int, channels: int = 8, stride: int = 2):
        super().__init__()
        conv = _conv(spatial_dims)
        self.stride = stride
        self.net = nn.Sequential(
            conv(1, channels, 3, stride=stride, padding=1),
            nn.LeakyReLU(0.2),
            conv(channels, channels, 3, padding=1),
            nn.LeakyReLU(0.2),
            conv(channels, channels, 1),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


def feature_gradient(
    moving_features: torch.Tensor, fixed_features: torch.Tensor, phi: torch.Tensor
) -> torch.Tensor:
    """∂L_feat/∂phi per voxel (B, D, *S): 2/C Σ_c (E_m∘phi - E_f)(∇E_m)∘phi, phi in voxels of
    the features' grid. Differentiable in the features; phi is taken as given."""
    phi = phi.detach()
    channels = moving_features.shape[1]
    residual = warp(moving_features, phi) - fixed_features  # (B, C, *S)
    grad_m = spatial_gradient(moving_features).flatten(1, 2)  # (B, C·D, *S)
    warped_grad = warp(grad_m, phi).unflatten(1, (channels, -1))  # (B, C, D, *S)
    return 2.0 * (residual.unsqueeze(2) * warped_grad).sum(1) / channels
