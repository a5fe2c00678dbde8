"""Similarity and regularisation losses as pure functions of tensors (B, C, *spatial).

Every similarity here is a *loss* (lower is better) averaged over voxels, so it can be
both the inner loss whose gradient drives RIIR and a term of the outer training loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from conventions.options import SIMILARITIES
from model.networks.metrics import determinant
from model.networks.warp import warp


def spatial_gradient(x: torch.Tensor) -> torch.Tensor:
    """Central differences of (B, C, *S) along each spatial axis -> (B, C, D, *S).

    Interior voxels use (x[i+1] - x[i-1]) / 2, borders the one-sided difference; this is the
    image gradient the analytic MSE gradient needs and the Jacobian of a displacement.
    """
    return torch.stack([central_difference(x, 2 + d) for d in range(x.dim() - 2)], dim=2)


def mse(warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    return (warped - fixed).pow(2).mean()


# Linear operators on the CPU's hot path, each with a hand-written adjoint. Autograd's own
# backward of the slices they are made of zero-fills a whole copy of the input for every slice
# (a quarter of a refinement step on a 1-mm brain), and ``avg_pool3d``'s kernel is not
# vectorised. Each adjoint runs through ``_Linear`` again, so second derivatives (RIIR's inner
# gradient under ``create_graph``) work too. ``dim`` is a tensor axis.


def _central(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.gradient(x, dim=dim)[0]``: (x[i+1] - x[i-1]) / 2 inside, one-sided at the ends."""
    n, out = x.shape[dim], torch.empty_like(x)
    torch.sub(x.narrow(dim, 2, n - 2), x.narrow(dim, 0, n - 2), out=out.narrow(dim, 1, n - 2))
    out.narrow(dim, 1, n - 2).mul_(0.5)
    out.narrow(dim, 0, 1).copy_(x.narrow(dim, 1, 1) - x.narrow(dim, 0, 1))
    out.narrow(dim, n - 1, 1).copy_(x.narrow(dim, n - 1, 1) - x.narrow(dim, n - 2, 1))
    return out


def _central_adjoint(g: torch.Tensor, dim: int) -> torch.Tensor:
    n, out = g.shape[dim], torch.zeros_like(g)
    half = g.narrow(dim, 1, n - 2) * 0.5
    out.narrow(dim, 2, n - 2).add_(half)
    out.narrow(dim, 0, n - 2).sub_(half)
    for end, inner in ((0, 1), (n - 1, n - 2)):
        edge = g.narrow(dim, end, 1)
        out.narrow(dim, max(end, inner), 1).add_(edge)
        out.narrow(dim, min(end, inner), 1).sub_(edge)
    return out


def _forward(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.diff(x, dim=dim)``: x[i+1] - x[i], one shorter along ``dim``."""
    n = x.shape[dim]
    return x.narrow(dim, 1, n - 1) - x.narrow(dim, 0, n - 1)


def _forward_adjoint(g: torch.Tensor, dim: int) -> torch.Tensor:
    shape = list(g.shape)
    shape[dim] += 1
    out = g.new_zeros(shape)
    out.narrow(dim, 1, g.shape[dim]).add_(g)
    out.narrow(dim, 0, g.shape[dim]).sub_(g)
    return out


def _box(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a window^D box centred on each voxel, zero outside ``x``: along one axis at a
    time (cost D·w per voxel, not w^D), each offset added in place into the shifted slice.
    The centred box with zero padding is its own adjoint."""
    for dim in range(2, x.dim()):
        n, out = x.shape[dim], x.clone()
        for k in range(1, min(window // 2, n - 1) + 1):
            out.narrow(dim, k, n - k).add_(x.narrow(dim, 0, n - k))
            out.narrow(dim, 0, n - k).add_(x.narrow(dim, k, n - k))
        x = out
    return x.div_(float(window ** (x.dim() - 2)))


# name: (the operator, its adjoint's name)
_OPERATORS: dict[str, tuple[Callable[[torch.Tensor, int], torch.Tensor], str]] = {
    "central": (_central, "central_adjoint"),
    "central_adjoint": (_central_adjoint, "central"),
    "forward": (_forward, "forward_adjoint"),
    "forward_adjoint": (_forward_adjoint, "forward"),
    "box": (_box, "box"),
}


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, name: str, arg: int) -> torch.Tensor:  # type: ignore[override]
        ctx.name, ctx.arg = name, arg
        return _OPERATORS[name][0](x, arg)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        return _Linear.apply(grad, _OPERATORS[ctx.name][1], ctx.arg), None, None


def central_difference(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.gradient(x, dim=dim)[0]`` (unit spacing), with a cheaper backward."""
    if x.shape[dim] < 2:
        raise ValueError(f"a central difference needs 2 or more samples along axis {dim}")
    return _Linear.apply(x, "central", dim)  # type: ignore[no-any-return]


def forward_difference(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.diff(x, dim=dim)``, with a cheaper backward."""
    return _Linear.apply(x, "forward", dim)  # type: ignore[no-any-return]


def _box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Local mean over a window^D box (``window`` odd, so the box has a centre), zero padding
    counted in the mean, as VoxelMorph's NCC does; the border effect is the same for both
    images so it cancels in the correlation."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the NCC window must be an odd number of voxels, not {window}")
    return _Linear.apply(x, "box", window)  # type: ignore[no-any-return]


def box_statistics(image: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The local mean and variance of ``image`` over window^D boxes: ``local_ncc``'s for the
    fixed image, which an optimiser that keeps the fixed image computes once."""
    mean = _box_mean(image, window)
    return mean, (_box_mean(image * image, window) - mean * mean).clamp_min(0)


def local_ncc(
    warped: torch.Tensor,
    fixed: torch.Tensor,
    window: int = 9,
    eps: float = 1e-5,
    mask: torch.Tensor | None = None,
    fixed_statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Loss 1 - mean squared local normalised cross-correlation (window^D boxes).

    Squared correlation as in VoxelMorph: it is smooth at zero and insensitive to contrast
    inversion, which suits multi-contrast MRI. ``eps`` is VoxelMorph's, which it adds to
    window *sums*; with the window *means* used here it is divided by the window size².
    ``fixed_statistics``: ``box_statistics(fixed, window)``, when the caller holds them.
    """
    eps = eps / float(window ** (warped.dim() - 2)) ** 2
    mu_f, var_f = fixed_statistics or box_statistics(fixed, window)
    # The warped image's three local means in one pass (channels stacked): a third of the
    # pooling calls, forward and backward.
    channels = warped.shape[1]
    means = _box_mean(torch.cat([warped, warped * warped, warped * fixed], dim=1), window)
    mu_w, mean_ww, mean_wf = means.split(channels, dim=1)
    cross = mean_wf - mu_w * mu_f
    var_w = (mean_ww - mu_w * mu_w).clamp_min(0)
    ncc2 = cross * cross / (var_w * var_f + eps)
    if mask is None:
        return 1.0 - ncc2.mean()
    # averaged over the mask's voxels only (B, 1, *S), e.g. the real image without padding
    return 1.0 - (ncc2 * mask).sum() / (mask.sum() * warped.shape[1]).clamp_min(1)


def nmi(
    warped: torch.Tensor, fixed: torch.Tensor, bins: int = 32, sigma: float | None = None
) -> torch.Tensor:
    """Loss -NMI with a Parzen-window (Gaussian) joint histogram, intensities in [0, 1].

    NMI = (H(W) + H(F)) / H(W, F) (Studholme): differentiable because every voxel spreads a
    Gaussian of width ``sigma`` (default: half a bin) over the bin centres.
    """
    sigma = sigma if sigma is not None else 0.5 / bins
    centres = torch.linspace(0, 1, bins, device=warped.device, dtype=warped.dtype)

    def weights(x: torch.Tensor) -> torch.Tensor:  # (B, N, bins), each row sums to 1
        x = x.flatten(1).unsqueeze(-1)
        w = torch.exp(-0.5 * ((x - centres) / sigma) ** 2)
        return w / w.sum(-1, keepdim=True).clamp_min(1e-12)

    w_w, w_f = weights(warped), weights(fixed)
    joint = torch.bmm(w_w.transpose(1, 2), w_f) / w_w.shape[1]  # (B, bins, bins)

    def entropy(p: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        return -(p * torch.log(p.clamp_min(1e-12))).sum(dims)

    h_joint = entropy(joint, (1, 2))
    h_w, h_f = entropy(joint.sum(2), (1,)), entropy(joint.sum(1), (1,))
    return -((h_w + h_f) / h_joint.clamp_min(1e-12)).mean()


def diffusion(displacement: torch.Tensor) -> torch.Tensor:
    """Diffusion regulariser: squared forward differences of phi (voxel units), averaged over
    voxels, components and axes — VoxelMorph's ``Grad('l2')``, the definition the paper's
    λ values (0.05 MSE, 0.1 NMI) were tuned with. It is mean ‖∇phi‖² divided by D²."""
    spatial = displacement.dim() - 2
    terms = [forward_difference(displacement, 2 + d).pow(2).mean() for d in range(spatial)]
    return torch.stack(terms).mean()


def log_jacobian(displacement: torch.Tensor, floor: float = 1e-2) -> torch.Tensor:
    """log det(I + ∇phi) per voxel (B, *S) of a voxel displacement (B, D, *S), with the
    central differences the evaluation's Jacobian uses (``model.networks.metrics``) and the
    determinant clamped at ``floor`` so folded voxels stay finite."""
    d = displacement.dim() - 2
    # grad[k][c] = d phi_c / d x_k. Taken apart by unbind, whose backward stacks the parts:
    # indexing one stacked (B, D, D, *S) gradient instead zero-fills a whole copy of it for
    # each of the D² entries in the backward pass (a fifth of a refinement step on a brain).
    grad = [central_difference(displacement, 2 + k).unbind(1) for k in range(d)]
    # j[c][k] = d(x_c + phi_c) / d x_k, its determinant written out by the evaluation's own
    # formula: on a 2-mm brain grid ~0.6× the cost of torch.linalg.det over 3×3 batches.
    j = [[grad[k][c] + (1.0 if c == k else 0.0) for k in range(d)] for c in range(d)]
    det: torch.Tensor = determinant(j)
    return det.clamp_min(floor).log()


def volume_change(displacement: torch.Tensor) -> torch.Tensor:
    """Mean (log|J|)² of a voxel displacement: a regulariser of local volume change alone.
    Shears and rotations cost it nothing, where the diffusion term charges every gradient of
    phi; the evaluation's roughness (std log|J|) measures exactly this change."""
    return log_jacobian(displacement).pow(2).mean()


def pseudo_huber(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x² where |x| ≪ ``scale``, growing like 2 scale |x| beyond it (2 s² (√(1 + (x/s)²) − 1)):
    a square that charges a few large values less than many small ones. ``scale`` 0: x²."""
    if not scale:
        return x.pow(2)
    return 2 * scale**2 * ((1 + (x / scale).pow(2)).sqrt() - 1)


def soft_dice(
    warped_onehot: torch.Tensor, fixed_onehot: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Loss 1 - mean soft Dice over the foreground channels of one-hot maps (B, K, *S)."""
    dims = tuple(range(2, warped_onehot.dim()))
    inter = (warped_onehot * fixed_onehot).sum(dims)
    total = warped_onehot.sum(dims) + fixed_onehot.sum(dims)
    dice = (2 * inter + eps) / (total + eps)
    return 1.0 - dice[:, 1:].mean()


SimilarityLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def similarity_loss(name: str, ncc_window: int = 9) -> SimilarityLoss:
    """The similarity named ``name``, one of ``conventions.options.SIMILARITIES``."""
    if name == "mse":
        return mse
    if name == "ncc":
        return lambda w, f: local_ncc(w, f, window=ncc_window)
    if name == "nmi":
        return nmi
    raise ValueError(f"unknown similarity {name!r}; choose {', '.join(SIMILARITIES)}")


def inner_gradient(
    name: str,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    displacement: torch.Tensor,
    *,
    ncc_window: int = 9,
    create_graph: bool = False,
) -> torch.Tensor:
    """Per-voxel gradient of the similarity loss with respect to the displacement.

    Scaling: the loss is a mean over voxels, so its raw gradient shrinks with image size. We
    multiply by the number of voxels, which makes the gradient the derivative of the per-voxel
    loss: the same scale at 64³ as at 224³, so one trained cell serves every grid size.

    MSE uses the analytic gradient 2 (m∘phi - f) (∇m)∘phi with the moving image's central-
    difference gradient warped along; NCC and NMI use autograd. ``create_graph`` keeps the
    graph for second-order (meta-)gradients through this gradient.
    """
    voxels = displacement[0, 0].numel()
    if name == "mse":
        residual = warp(moving, displacement) - fixed  # (B, C, *S)
        moving_gradient = spatial_gradient(moving).flatten(1, 2)  # (B, C*D, *S)
        warped_gradient = warp(moving_gradient, displacement).unflatten(1, (moving.shape[1], -1))
        grad = (2.0 * residual.unsqueeze(2) * warped_gradient).sum(1)  # (B, D, *S)
        return grad / moving.shape[1]
    loss_fn = similarity_loss(name, ncc_window)
    with torch.enable_grad():
        if not displacement.requires_grad:
            displacement = displacement.detach().requires_grad_(True)
        loss = loss_fn(warp(moving, displacement), fixed) * moving.shape[0]
        (grad,) = torch.autograd.grad(loss, displacement, create_graph=create_graph)
    return grad * voxels
