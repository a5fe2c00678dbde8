import itertools

import numpy as np
import pytest
import torch
from helpers import as_tensor, blobs, shifted

from model.networks.descent import descend
from model.networks.losses import mse
from model.networks.riir import RIIR, RIIRConfig
from model.networks.warp import warp

SHAPES = {2: (24, 20), 3: (12, 14, 10)}


def _pair(d, seed=0):
    shape = SHAPES[d]
    return as_tensor(blobs(shape, seed=seed + 1)), as_tensor(blobs(shape, seed=seed))


def _randomise_output(model: RIIR) -> RIIR:
    torch.nn.init.normal_(model.cell.conv_out.weight, std=0.05)
    return model


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("inputs", ["gradient", "explicit", "implicit", "gradient+explicit"])
@pytest.mark.parametrize("states", list(itertools.product([False, True], repeat=2)))
def test_forward_shapes_for_every_variant(d, inputs, states):
    moving, fixed = _pair(d)
    model = RIIR(
        RIIRConfig(
            spatial_dims=d, steps=3, hidden_channels=(6, 4), hidden_states=states, inputs=inputs
        )
    )
    phis = model(moving, fixed)
    assert len(phis) == 3
    assert all(p.shape == (1, d, *SHAPES[d]) for p in phis)


@pytest.mark.parametrize("d", [2, 3])
def test_gradient_explicit_input_is_both_compositions(d):
    moving, fixed = _pair(d)
    torch.manual_seed(0)
    phi = 0.5 * torch.randn(1, d, *SHAPES[d])
    cells = {
        name: RIIR(RIIRConfig(spatial_dims=d, inputs=name, gradient_scale=3.0))
        for name in ("gradient", "explicit", "gradient+explicit")
    }
    both, gradient, explicit = (
        cells[name]._cell_input(phi, phi, moving, fixed, "mse")
        for name in ("gradient+explicit", "gradient", "explicit")
    )
    assert both.shape[1] == 2 * d + 2 == cells["gradient+explicit"].cell.conv_in.in_channels
    torch.testing.assert_close(both[:, : 2 * d], gradient)  # [phi, ∇L]
    torch.testing.assert_close(both[:, 2 * d :], explicit[:, d:])  # [I_mov∘phi, I_fix]


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("stride", [1, 2])
def test_untrained_cell_is_the_identity_optimiser(d, stride):
    moving, fixed = _pair(d)
    model = RIIR(RIIRConfig(spatial_dims=d, steps=4, cell_stride=stride))
    assert all(torch.count_nonzero(p) == 0 for p in model(moving, fixed))


@pytest.mark.parametrize("loss", ["mse", "ncc", "nmi"])
@pytest.mark.parametrize("stride", [1, 2])
def test_every_parameter_gets_a_gradient(loss, stride):
    moving, fixed = _pair(2)
    model = _randomise_output(
        RIIR(
            RIIRConfig(
                spatial_dims=2, steps=2, hidden_channels=(6, 4), inner_loss=loss, cell_stride=stride
            )
        )
    )
    phis = model(moving, fixed)
    sum(mse(warp(moving, p), fixed) for p in phis).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize(("d", "stride"), [(2, 2), (2, 3), (3, 2)])
def test_convex_upsampling_starts_as_linear_interpolation_and_learns_edges(d, stride):
    # RAFT's convex combination of the 3^D coarse neighbours, at its initial weights, is
    # F.interpolate's linear interpolation (align_corners=False, edges replicated).
    from model.networks.riir import ConvexUpsampling

    torch.manual_seed(0)
    coarse = torch.randn(2, d, *([5, 4, 3][:d]))
    features = torch.randn(2, 7, *coarse.shape[2:])
    up = ConvexUpsampling(7, d, stride)
    fine = up(coarse, features)
    assert fine.shape == (2, d, *(stride * n for n in coarse.shape[2:]))
    mode = "bilinear" if d == 2 else "trilinear"
    expected = torch.nn.functional.interpolate(
        coarse, size=fine.shape[2:], mode=mode, align_corners=False
    )
    torch.testing.assert_close(fine, expected, rtol=1e-5, atol=1e-5)
    # Other weights give a convex combination of the neighbours, not an interpolation:
    # never outside their range, and different where the field changes.
    torch.nn.init.normal_(up.weights.weight, std=1.0)
    moved = up(coarse, features)
    assert (moved - expected).abs().max() > 0.05
    assert moved.max() <= coarse.max() + 1e-5 and moved.min() >= coarse.min() - 1e-5


@pytest.mark.parametrize("d", [2, 3])
def test_a_convex_model_registers_any_shape_and_asks_for_multiples(d):
    moving, fixed = _pair(d)  # 24×20 / 12×14×10: multiples of 2
    odd = tuple(n - 1 for n in SHAPES[d])
    model = _randomise_output(
        RIIR(RIIRConfig(spatial_dims=d, steps=2, cell_stride=2, upsampling="convex"))
    )
    assert model.shape_multiple == 2
    assert model(moving, fixed)[-1].shape == (1, d, *SHAPES[d])
    crop = (..., *(slice(0, n) for n in odd))
    assert model(moving[crop], fixed[crop])[-1].shape == (1, d, *odd)
    linear = RIIR(RIIRConfig(spatial_dims=d, cell_stride=2))
    assert linear.shape_multiple == 1 and linear.upsampling is None
    with pytest.raises(ValueError, match="upsampling must be one of"):
        RIIR(RIIRConfig(spatial_dims=d, upsampling="cubic"))


def test_second_order_meta_gradient_differs_from_first_order():
    moving, fixed = _pair(2)
    grads = []
    for second_order in (False, True):
        torch.manual_seed(0)
        model = _randomise_output(
            RIIR(
                RIIRConfig(
                    spatial_dims=2,
                    steps=3,
                    inner_loss="ncc",
                    hidden_channels=(6, 4),
                    second_order=second_order,
                )
            )
        )
        mse(warp(moving, model(moving, fixed)[-1]), fixed).backward()
        grads.append(model.cell.conv_in.weight.grad.clone())
    # Small (the update is small at initialisation) but far above float round-off.
    assert (grads[0] - grads[1]).norm() / grads[0].norm() > 1e-5


@pytest.mark.parametrize("d", [2, 3])
def test_gradient_scale_multiplies_only_the_gradient_channels(d):
    """A cell with gradient_scale s computes what an unscaled cell does when the input weights
    of its gradient channels are s times larger: the scale reaches ∇L_inner and nothing else."""
    moving, fixed = _pair(d)
    torch.manual_seed(0)
    plain = _randomise_output(RIIR(RIIRConfig(spatial_dims=d, steps=3, hidden_channels=(6, 4))))
    scaled = RIIR(RIIRConfig(spatial_dims=d, steps=3, hidden_channels=(6, 4), gradient_scale=10.0))
    scaled.load_state_dict(plain.state_dict())
    with torch.no_grad():
        scaled.cell.conv_in.weight[:, d:] /= 10.0  # channels [phi (d), ∇L_inner (d)]
        expected, got = plain(moving, fixed)[-1], scaled(moving, fixed)[-1]
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_progress_and_return_last_only():
    moving, fixed = _pair(2)
    seen = []
    model = _randomise_output(RIIR(RIIRConfig(spatial_dims=2, steps=5)))
    with torch.no_grad():
        phis = model(
            moving, fixed, progress=lambda t, total: seen.append((t, total)), return_all=False
        )
        all_phis = model(moving, fixed)
    assert seen == [(t, 5) for t in range(1, 6)]
    assert len(phis) == 1
    torch.testing.assert_close(phis[0], all_phis[-1])


def test_training_a_few_iterations_lowers_the_outer_loss():
    torch.manual_seed(0)
    fixed = as_tensor(blobs((32, 32), seed=0))
    moving = as_tensor(shifted(blobs((32, 32), seed=0), (1.5, -1.0)))
    model = RIIR(RIIRConfig(spatial_dims=2, steps=3, hidden_channels=(8, 8)))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = mse(warp(moving, model(moving, fixed)[-1]), fixed)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("loss", ["mse", "ncc"])
def test_gradient_descent_recovers_a_known_translation(d, loss):
    shape = (32, 30) if d == 2 else (20, 22, 18)
    shift = (1.5, -1.0, 0.75)[:d]
    fixed = blobs(shape, count=6)
    moving = shifted(fixed, tuple(-s for s in shift))  # moving(x + shift) = fixed(x)
    phi = descend(
        as_tensor(moving), as_tensor(fixed), loss, iterations=300, step=1.0, sigma=3.0, ncc_window=5
    )
    centre = tuple(slice(n // 4, 3 * n // 4) for n in shape)
    # Local NCC on smooth blobs has weak gradients and converges more slowly than MSE; the
    # tolerance still separates every axis' shift (1.5, -1, 0.75) and its sign.
    tolerance = 0.2 if loss == "mse" else 0.3
    for axis, s in enumerate(shift):
        assert phi[0, axis][centre].mean().item() == pytest.approx(s, abs=tolerance)


@pytest.mark.parametrize("d", [2, 3])
def test_gradient_descent_recovers_a_smooth_deformation(d):
    shape = (40, 40) if d == 2 else (24, 24, 24)
    grid = np.meshgrid(*[np.linspace(0, np.pi, n) for n in shape], indexing="ij")
    true_phi = np.stack([1.2 * np.sin(grid[(a + 1) % d]) * np.sin(grid[a]) for a in range(d)])
    fixed = blobs(shape, count=6)
    # moving is chosen so that moving(x + true_phi(x)) ≈ fixed(x): warp fixed by the inverse.
    from scipy.ndimage import map_coordinates

    coords = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).astype(float)
    inverse = -true_phi
    for _ in range(10):  # fixed-point iteration for the inverse displacement
        inverse = -np.stack(
            [
                map_coordinates(true_phi[a], coords + inverse, order=1, mode="nearest")
                for a in range(d)
            ]
        )
    moving = map_coordinates(fixed, coords + inverse, order=1, mode="nearest").astype(np.float32)
    phi = descend(as_tensor(moving), as_tensor(fixed), "mse", iterations=200, sigma=2.0)[0].numpy()
    inner = tuple(slice(n // 5, 4 * n // 5) for n in shape)
    error = np.sqrt(((phi - true_phi) ** 2).sum(0))[inner]
    magnitude = np.sqrt((true_phi**2).sum(0))[inner]
    assert error.mean() < 0.35 * magnitude.mean()
