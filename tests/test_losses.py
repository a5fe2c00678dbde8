import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import as_tensor, blobs

from model.networks.losses import (
    _box_mean,
    box_statistics,
    central_difference,
    diffusion,
    forward_difference,
    inner_gradient,
    local_ncc,
    log_jacobian,
    mse,
    nmi,
    pseudo_huber,
    soft_dice,
    volume_change,
)
from model.networks.metrics import jacobian_determinant
from model.networks.warp import warp

SHAPES = [(20, 22), (12, 14, 10)]


@pytest.mark.parametrize("shape", SHAPES)
def test_similarities_of_an_image_with_itself(shape):
    # Texture everywhere: local NCC is undefined (and VoxelMorph's eps makes it < 1) in flat
    # windows, so the image has local variance in every window.
    noise = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(0))
    image = 0.5 * as_tensor(blobs(shape)) + 0.5 * noise
    assert mse(image, image) == 0
    assert local_ncc(image, image).item() == pytest.approx(0.0, abs=1e-3)  # 1 - NCC² = 0
    assert local_ncc(image, -2 * image).item() == pytest.approx(0.0, abs=1e-3)  # squared
    other = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(1))
    assert local_ncc(image, other) > local_ncc(image, image) + 0.05
    assert nmi(image, image) < nmi(image, other)
    # The fixed image's statistics, computed once by an optimiser, give the same loss.
    held = local_ncc(image, other, 5, fixed_statistics=box_statistics(other, 5))
    assert held.item() == pytest.approx(local_ncc(image, other, 5).item(), abs=1e-7)
    assert held.item() != pytest.approx(local_ncc(image, other, 9).item(), abs=1e-4)


@pytest.mark.parametrize("shape,window", [((2, 3, 11, 8), 5), ((1, 2, 9, 12, 7), 9)])
def test_box_mean_is_the_zero_padded_average_and_its_own_adjoint(shape, window):
    # The in-place shifted sums against pooling over an explicitly zero-padded image (one
    # axis shorter than the window in 3-D), and the hand-written backward against finite
    # differences, twice over: RIIR's inner NCC gradient is differentiated again in training.
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    r, pool = window // 2, F.avg_pool2d if len(shape) == 4 else F.avg_pool3d
    expected = pool(F.pad(x, [r] * 2 * (len(shape) - 2)), kernel_size=window, stride=1)
    assert torch.allclose(_box_mean(x, window), expected, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: _box_mean(t, window), (x,))
    assert torch.autograd.gradgradcheck(lambda t: _box_mean(t, window), (x,))
    with pytest.raises(ValueError, match="odd"):
        _box_mean(x, window - 1)


@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 2, 2, 6, 3)])
def test_finite_differences_are_torchs_with_hand_written_adjoints(shape):
    # Each axis, a length-2 one included (only the one-sided ends), forward and twice back.
    x = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    for dim in range(2, len(shape)):
        assert torch.equal(central_difference(x, dim), torch.gradient(x, dim=dim)[0])
        assert torch.equal(forward_difference(x, dim), torch.diff(x, dim=dim))
        for op in (central_difference, forward_difference):
            assert torch.autograd.gradcheck(lambda t, op=op, dim=dim: op(t, dim), (x,))
            assert torch.autograd.gradgradcheck(lambda t, op=op, dim=dim: op(t, dim), (x,))
    with pytest.raises(ValueError, match="2 or more samples"):
        central_difference(x[:, :, :1], 2)


def test_nmi_of_identical_images_is_near_two():
    image = torch.rand(1, 1, 40, 40)
    # Parzen smoothing (each voxel spreads over ~3 bins) lowers Studholme's maximum of 2 for
    # identical images; independent images stay near the minimum of 1.
    assert -nmi(image, image).item() > 1.45
    assert -nmi(image, torch.rand(1, 1, 40, 40)).item() < 1.1


def test_mse_hand_value():
    a = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    b = torch.tensor([[[[1.0, 1.0], [0.0, 3.0]]]])
    assert mse(a, b).item() == pytest.approx((1 + 0 + 4 + 0) / 4)


def test_diffusion_of_linear_field():
    # phi_0(x) = 0.5 x_0 on a 2-D grid: the only non-zero difference is 0.5 (component 0,
    # axis 0); averaged over 2 components and 2 axes: 0.25 / 4.
    x = torch.arange(6.0).view(6, 1).expand(6, 5)
    phi = torch.stack([0.5 * x, torch.zeros(6, 5)])[None]
    assert diffusion(phi).item() == pytest.approx(0.0625)
    assert diffusion(torch.zeros(1, 2, 6, 5)).item() == 0


def test_volume_change_charges_scaling_and_leaves_a_shear_free():
    """A shear keeps every voxel's volume (det J = 1): the volume term is 0 where diffusion
    charges it. A uniform scaling by s costs (D log s)²; log|J| agrees with the metrics'."""
    grid = torch.stack(
        torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in (8, 9, 10)), indexing="ij")
    )
    shear = torch.zeros(1, 3, 8, 9, 10)
    shear[0, 0] = 0.3 * grid[1]  # u_0 = 0.3 x_1
    assert volume_change(shear) < 1e-10 and diffusion(shear) > 0
    scaled = 0.1 * grid[None]  # x -> 1.1 x
    assert torch.isclose(volume_change(scaled), torch.tensor((3 * math.log(1.1)) ** 2))
    phi = torch.randn(1, 3, 8, 9, 10, generator=torch.Generator().manual_seed(0)) * 0.2
    for field in (phi, phi[:, :2, 0]):  # 3-D, and a 2-D slice's
        det = jacobian_determinant(field[0].double().numpy())
        expected = np.log(np.clip(det, 1e-2, None))
        assert np.allclose(log_jacobian(field)[0].numpy(), expected, atol=1e-5)


def test_pseudo_huber_is_the_square_near_zero_and_linear_far_out():
    """The refinement's robust volume term: x² for |x| much below the scale, about 2 s |x|
    far beyond it, so one large change costs less than its square; scale 0 is the square."""
    x = torch.tensor([0.01, -0.02, 4.0, -8.0])
    assert torch.equal(pseudo_huber(x, 0.0), x.pow(2))
    robust = pseudo_huber(x, 0.25)
    assert torch.allclose(robust[:2], x[:2].pow(2), rtol=1e-2)
    assert torch.allclose(robust[2:], 2 * 0.25 * x[2:].abs(), rtol=0.1)
    assert robust[3] < 2.1 * robust[2] and (robust[2:] < x[2:].pow(2) / 5).all()


def test_soft_dice_perfect_and_disjoint():
    a = torch.zeros(1, 2, 4, 4)
    a[:, 0], a[:, 1, :2] = 1, 1
    a[:, 0, :2] = 0
    assert soft_dice(a, a).item() == pytest.approx(0.0, abs=1e-6)
    b = torch.flip(a, dims=[2])
    assert soft_dice(a, b).item() == pytest.approx(1.0, abs=1e-6)


def _finite_difference(loss_fn, moving, fixed, phi, index, eps=1e-3):
    plus, minus = phi.clone(), phi.clone()
    plus[index] += eps
    minus[index] -= eps
    return (loss_fn(warp(moving, plus), fixed) - loss_fn(warp(moving, minus), fixed)) / (2 * eps)


@pytest.mark.parametrize(
    "name,loss_fn", [("ncc", lambda w, f: local_ncc(w, f, window=5)), ("nmi", nmi)]
)
@pytest.mark.parametrize("shape", SHAPES)
def test_autograd_inner_gradient_matches_finite_differences(name, loss_fn, shape):
    moving = as_tensor(blobs(shape, seed=1), torch.float64)
    fixed = as_tensor(blobs(shape, seed=2), torch.float64)
    # Drawn from a generator of its own: the global one's state depends on the tests run
    # before, and a finite difference across one of the warp's kinks misses by percents.
    drawn = torch.Generator().manual_seed(0)
    phi = torch.rand(1, len(shape), *shape, dtype=torch.float64, generator=drawn) * 0.8 + 0.1
    grad = inner_gradient(name, moving, fixed, phi, ncc_window=5)
    voxels = phi[0, 0].numel()
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        index = (
            0,
            int(torch.randint(len(shape), (1,), generator=generator)),
            *[int(torch.randint(2, n - 2, (1,), generator=generator)) for n in shape],
        )
        numeric = _finite_difference(loss_fn, moving, fixed, phi, index) * voxels
        assert grad[index].item() == pytest.approx(numeric.item(), rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("shape", [(24, 24), (16, 16, 16)])
def test_analytic_mse_gradient_matches_finite_differences(shape):
    # The analytic gradient uses the central-difference image gradient, finite differences
    # of the bilinear warp use the local slope: they agree closely on a smooth image.
    moving = as_tensor(blobs(shape, seed=1), torch.float64)
    fixed = as_tensor(blobs(shape, seed=2), torch.float64)
    phi = torch.rand(1, len(shape), *shape, dtype=torch.float64) * 0.5
    grad = inner_gradient("mse", moving, fixed, phi)
    voxels = phi[0, 0].numel()
    numeric = torch.zeros_like(phi)
    generator = torch.Generator().manual_seed(0)
    picks = [
        (0, d, *[int(torch.randint(2, n - 2, (1,), generator=generator)) for n in shape])
        for d in range(len(shape))
        for _ in range(8)
    ]
    analytic = torch.stack([grad[i] for i in picks])
    numeric = torch.stack([_finite_difference(mse, moving, fixed, phi, i) * voxels for i in picks])
    cosine = torch.nn.functional.cosine_similarity(analytic, numeric, dim=0)
    assert cosine > 0.98
    assert (analytic - numeric).norm() / numeric.norm() < 0.15


def test_second_order_gradient_flows_through_inner_gradient():
    shape = (12, 12)
    moving, fixed = as_tensor(blobs(shape, seed=1)), as_tensor(blobs(shape, seed=2))
    phi = torch.zeros(1, 2, *shape, requires_grad=True)
    grad = inner_gradient("ncc", moving, fixed, phi, ncc_window=5, create_graph=True)
    (second,) = torch.autograd.grad(grad.pow(2).sum(), phi)
    assert torch.isfinite(second).all() and second.abs().sum() > 0
