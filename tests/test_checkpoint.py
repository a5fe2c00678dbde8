import pytest
import torch
from helpers import as_tensor, blobs

from conventions.errors import ModelNotFoundError
from model.networks.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    load_state_grown,
    read_checkpoint,
    save_checkpoint,
)
from model.networks.riir import RIIR, RIIRConfig


@pytest.mark.parametrize("d", [2, 3])
def test_round_trip_rebuilds_the_model_with_identical_outputs(tmp_path, d):
    torch.manual_seed(0)
    config = RIIRConfig(
        spatial_dims=d,
        steps=3,
        hidden_channels=(6, 5),
        hidden_states=(True, False),
        inputs="explicit",
        inner_loss="ncc",
        cell_stride=2,
        gru_kernel=1,
        upsampling="convex",
    )
    model = RIIR(config)
    torch.nn.init.normal_(model.cell.conv_out.weight, std=0.1)
    torch.nn.init.normal_(model.upsampling.weights.weight, std=0.1)
    path = save_checkpoint(tmp_path / "m.pt", model, "riir", {"name": "m", "version": "1"})
    # The file alone rebuilds the model, and loads under weights_only=True.
    payload = torch.load(path, weights_only=True)
    assert payload["arch"] == "riir" and payload["format_version"] == FORMAT_VERSION
    loaded, meta = load_checkpoint(path)
    assert loaded.config == config
    assert meta == {"name": "m", "version": "1", "arch": "riir"}
    shape = (20, 18) if d == 2 else (12, 10, 14)
    moving, fixed = as_tensor(blobs(shape, seed=1)), as_tensor(blobs(shape))
    with torch.no_grad():
        expected = model.eval()(moving, fixed)
        actual = loaded(moving, fixed)
    for a, b in zip(actual, expected, strict=True):
        assert torch.equal(a, b)


def _registers_as(grown: RIIR, source: RIIR, d: int, **tolerance: float) -> torch.Tensor:
    """``grown``'s final field on a blob pair, checked to be ``source``'s (which moves); it
    keeps its graph, for the gradient checks."""
    shape = (20, 18) if d == 2 else (12, 10, 14)
    moving, fixed = as_tensor(blobs(shape, seed=1)), as_tensor(blobs(shape))
    with torch.no_grad():
        expected = source.eval()(moving, fixed)[-1]
    actual = grown.eval()(moving, fixed)[-1]
    assert expected.abs().max() > 0.01
    torch.testing.assert_close(actual, expected, **tolerance)
    return actual


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize(
    ("kernel", "channels", "inputs"),
    [(3, (6, 5), "gradient"), (1, (9, 7), "gradient"), (3, (8, 8), "gradient+explicit")],
)
def test_a_grown_model_starts_from_the_small_models_function(d, kernel, channels, inputs):
    # ConvGRU 1×1 → 3×3, more hidden channels and/or the images as extra inputs: the trained
    # weights keep their places (kernel centres, each gate's and input's block), so the larger
    # model registers exactly as the small one did before any training.
    torch.manual_seed(0)
    small = RIIR(RIIRConfig(spatial_dims=d, steps=3, hidden_channels=(6, 5), gru_kernel=1))
    torch.nn.init.normal_(small.cell.conv_out.weight, std=0.1)
    large = RIIR(
        RIIRConfig(
            spatial_dims=d, steps=3, hidden_channels=channels, gru_kernel=kernel, inputs=inputs
        )
    )
    grown = load_state_grown(large, small)
    assert ("cell.rnn1.gates.weight" in grown) and ("cell.conv_in.weight" in grown) == (
        channels != (6, 5)
    )
    assert large.cell.rnn2.candidate_h.weight.shape[2:] == (kernel,) * d
    actual = _registers_as(large, small, d, rtol=1e-5, atol=1e-6)
    # New channels are alive: the weights that will read them get a gradient from the start.
    actual.square().mean().backward()
    read_new = large.cell.conv_out.weight.grad[:, 5:]
    assert channels[1] == 5 or read_new.abs().max() > 0
    assert inputs == "gradient" or large.cell.conv_in.weight.grad[:, 2 * d :].abs().max() > 0


@pytest.mark.parametrize("d", [2, 3])
def test_a_linear_model_grows_into_a_convex_one_that_starts_the_same(d):
    torch.manual_seed(0)
    config = RIIRConfig(
        spatial_dims=d, steps=3, hidden_channels=(6, 5), gru_kernel=1, cell_stride=2
    )
    linear = RIIR(config)
    torch.nn.init.normal_(linear.cell.conv_out.weight, std=0.1)
    convex = RIIR(RIIRConfig(**{**vars(config), "upsampling": "convex"}))
    assert load_state_grown(convex, linear) == [
        "upsampling.weights.bias",
        "upsampling.weights.weight",
    ]
    actual = _registers_as(convex, linear, d, rtol=1e-4, atol=1e-5)
    actual.square().mean().backward()  # and the upsampling learns from the first step
    assert convex.upsampling.weights.weight.grad.abs().max() > 0
    with pytest.raises(ValueError, match="do not belong"):  # nothing else may be new
        load_state_grown(linear, convex)


def test_weights_that_cannot_grow_into_a_model_are_refused():
    wide = RIIR(RIIRConfig(spatial_dims=2, hidden_channels=(32, 32)))
    with pytest.raises(ValueError, match="does not fit"):  # channels do not shrink
        load_state_grown(RIIR(RIIRConfig(spatial_dims=2)), wide)
    with pytest.raises(ValueError, match="does not fit"):  # kernels do not shrink
        load_state_grown(
            RIIR(RIIRConfig(spatial_dims=2, gru_kernel=1)), RIIR(RIIRConfig(spatial_dims=2))
        )
    with pytest.raises(ValueError, match="does not fit"):  # the gradient is not an image
        load_state_grown(
            RIIR(RIIRConfig(spatial_dims=2, inputs="explicit")), RIIR(RIIRConfig(spatial_dims=2))
        )
    stateless = RIIR(RIIRConfig(spatial_dims=2, hidden_states=(False, True)))
    with pytest.raises(ValueError, match="do not belong"):
        load_state_grown(stateless, RIIR(RIIRConfig(spatial_dims=2)))


def test_unusable_files_raise_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelNotFoundError, match="not a readable"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ModelNotFoundError, match="not a RIIR checkpoint"):
        read_checkpoint(tmp_path / "foreign.pt")
    path = save_checkpoint(tmp_path / "new.pt", RIIR(RIIRConfig(spatial_dims=2)), "riir")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(ModelNotFoundError, match="newer RIIR"):
        read_checkpoint(path)


def test_a_pickled_object_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"format": "riir-checkpoint", "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelNotFoundError, match="not a readable"):
        read_checkpoint(tmp_path / "evil.pt")
