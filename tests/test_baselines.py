"""VoxelMorph and GraDIRN behind the common architecture interface, 2-D and 3-D."""

import pytest
import torch
from helpers import as_tensor, blobs, shifted

from model.networks.checkpoint import build_model, load_checkpoint, save_checkpoint
from model.networks.losses import diffusion, mse
from model.networks.warp import warp

SHAPES = {2: (32, 32), 3: (16, 16, 16)}
ARCHS = {
    "voxelmorph": {"encoder": [8, 8, 8], "decoder": [8, 8, 8, 8]},
    "gradirn": {"hidden_channels": 6},
}


def _model(arch, d):
    return build_model(arch, {"spatial_dims": d, **ARCHS[arch]})


def _pair(d):
    fixed = blobs(SHAPES[d], seed=3)
    moving = shifted(fixed, (1.5,) + (-1.0,) * (d - 1))
    return as_tensor(moving), as_tensor(fixed)


def _randomise(model):
    """Non-zero output layers, so a test can tell outputs apart."""
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if name.startswith(("flow", "regularisers")) and p.dim() > 1:
            torch.nn.init.normal_(p, std=0.02)
    return model


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_shapes(arch, d):
    moving, fixed = _pair(d)
    model = _model(arch, d)
    phis = model(moving, fixed)
    expected = 1 if arch == "voxelmorph" else 6  # GraDIRN: 2 resolutions × 3 iterations
    assert len(phis) == expected == model.config.steps
    assert all(p.shape == (1, d, *SHAPES[d]) for p in phis)
    assert len(model(moving, fixed, return_all=False)) == 1


@pytest.mark.parametrize("d", [2, 3])
def test_voxelmorph_zero_output_is_the_identity(d):
    moving, fixed = _pair(d)
    phi = _model("voxelmorph", d)(moving, fixed)[0]  # the flow layer starts at zero
    assert torch.count_nonzero(phi) == 0
    assert torch.allclose(warp(moving, phi), moving, atol=1e-6)


@pytest.mark.parametrize("d", [2, 3])
def test_gradirn_without_step_or_regulariser_is_the_identity(d):
    moving, fixed = _pair(d)
    model = _model("gradirn", d)
    with torch.no_grad():
        model.step_sizes.zero_()
    assert all(torch.count_nonzero(p) == 0 for p in model(moving, fixed))


def test_gradirn_untrained_is_gradient_descent_on_the_similarity():
    moving, fixed = _pair(2)
    phi = _model("gradirn", 2)(moving, fixed)[-1]
    assert mse(warp(moving, phi), fixed) < mse(moving, fixed)


def test_voxelmorph_refuses_a_grid_it_cannot_pool():
    model = _model("voxelmorph", 2)
    with pytest.raises(ValueError, match="multiple of 8"):
        model(torch.zeros(1, 1, 20, 32), torch.zeros(1, 1, 20, 32))


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_round_trip_gives_identical_outputs(arch, d, tmp_path):
    moving, fixed = _pair(d)
    model = _randomise(_model(arch, d)).eval()
    path = save_checkpoint(tmp_path / f"{arch}.pt", model, arch, {"name": arch})
    loaded, meta = load_checkpoint(path)
    assert meta["arch"] == arch
    with torch.no_grad():
        for a, b in zip(model(moving, fixed), loaded(moving, fixed), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ARCHS)
def test_short_overfit_on_one_pair_lowers_the_loss(arch):
    torch.manual_seed(0)
    moving, fixed = _pair(2)
    model = _model(arch, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss():
        phi = model(moving, fixed)[-1]
        return mse(warp(moving, phi), fixed) + 0.01 * diffusion(phi)

    first = loss().item()
    for _ in range(25):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    assert loss().item() < 0.7 * first
