"""Test-time refinement (model/networks/refine.py), the feature gradient
(model/networks/encoder.py) and the coarse-to-fine RIIR (model/networks/c2f.py) on small
synthetic images (never real data)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from helpers import as_tensor, blobs, labelled_folder, shifted

from conventions.errors import InputError
from model.networks.c2f import C2FRIIR, C2FConfig
from model.networks.checkpoint import load_checkpoint, load_state_grown, read_checkpoint
from model.networks.encoder import FeatureEncoder, feature_gradient
from model.networks.losses import mse
from model.networks.refine import Problem, RefineConfig, anatomy, real_box, refine
from model.networks.warp import warp, warp_window
from riir.cli import main

SHAPES = {2: (24, 20), 3: (16, 14, 12)}


def _padded(image: np.ndarray, pad: int = 3) -> np.ndarray:
    """``image`` padded by repeating its edges, as the hippocampus crops are."""
    return np.pad(image, pad, mode="edge")


def test_real_box_finds_the_crop_inside_edge_repeat_padding():
    image = _padded(blobs((10, 12, 8), seed=0), 3)
    box = real_box(as_tensor(image))
    assert [(s.start, s.stop) for s in box] == [(3, 13), (3, 15), (3, 11)]


def test_warp_window_is_warp_on_the_window():
    image = as_tensor(blobs((12, 10, 9), seed=1))
    phi = torch.randn(1, 3, 12, 10, 9) * 1.5
    window = (slice(2, 9), slice(1, 8), slice(3, 9))
    part = warp_window(image, phi[(..., *window)], (2, 1, 3))
    assert torch.allclose(part, warp(image, phi)[(..., *window)], atol=1e-5)


@pytest.mark.parametrize("start", ["identity", "network"])
@pytest.mark.parametrize("stride", [1, 2])
def test_refinement_lowers_its_objective(start, stride):
    fixed_np = _padded(blobs((12, 12, 10), seed=0))
    moving = as_tensor(shifted(fixed_np, (1.0, -1.5, 0.5)))
    fixed = as_tensor(fixed_np)
    phi = None if start == "identity" else 0.3 * torch.randn(1, 3, *fixed.shape[2:])
    cfg = RefineConfig(steps=30, lr=0.1, lam=0.1, stride=stride, margin=1)
    initial = phi if phi is not None else torch.zeros(1, 3, *fixed.shape[2:])
    problem = Problem(moving, fixed, initial, cfg)
    zero = torch.zeros(1, 3, *problem.correction_shape())
    before = problem.loss(zero).item()
    refined = refine(moving, fixed, phi, cfg)
    assert refined.shape == initial.shape
    after = Problem(moving, fixed, refined, cfg).loss(zero).item()
    assert after < 0.8 * before
    # Outside the window (the real box widened by the margin) the field is not touched.
    assert torch.equal(refined[..., 0], initial[..., 0])


def test_refinement_on_a_shrunk_grid_finds_the_shift_in_the_full_grids_voxels():
    """``shrink`` 2 solves on a grid half as fine; the field it returns is on the full grid
    in its voxels: a scaling slip between the grids would find half or twice the shift."""
    blob = blobs((40, 36), seed=2, count=6)
    moving, fixed = as_tensor(shifted(blob, (2.0, -3.0))), as_tensor(blob)
    start = 0.2 * torch.ones(1, 2, 40, 36)
    cfg = RefineConfig(steps=0, similarity="mse", masked=False, shrink=2, lam=0.01, lr=0.1)
    assert torch.allclose(refine(moving, fixed, start, cfg), start, atol=1e-6)
    for shrink in (1, 2):
        found = refine(moving, fixed, None, dataclasses.replace(cfg, steps=150, shrink=shrink))
        assert found.shape == (1, 2, 40, 36)
        inner = found[0, :, 10:30, 10:26].mean(dim=(1, 2))
        assert torch.allclose(inner, torch.tensor([-2.0, 3.0]), atol=0.4), (shrink, inner)
    with pytest.raises(ValueError, match="shrink"):
        RefineConfig(shrink=0)


def test_fine_steps_continue_the_shrunk_grids_answer_on_the_full_grid():
    """``fine_steps`` after the coarse ones: the progress counts both stages in one run, and
    the fine steps, starting from the coarse answer, lower the objective on the full grid."""
    fixed_np = blobs((40, 36), seed=3, count=10)
    moving, fixed = as_tensor(shifted(fixed_np, (1.5, -2.0))), as_tensor(fixed_np)
    cfg = RefineConfig(steps=40, similarity="mse", masked=False, shrink=2, lam=0.01, lr=0.1)
    coarse_only = refine(moving, fixed, None, cfg)
    seen: list[tuple[int, int]] = []
    both = refine(
        moving,
        fixed,
        None,
        dataclasses.replace(cfg, fine_steps=30),
        lambda k, n: seen.append((k, n)),
    )
    assert seen == [(k, 70) for k in range(1, 71)]
    zero = torch.zeros(1, 2, 40, 36)
    on_full_grid = dataclasses.replace(cfg, shrink=1)
    after_coarse = Problem(moving, fixed, coarse_only, on_full_grid).loss(zero).item()
    after_both = Problem(moving, fixed, both, on_full_grid).loss(zero).item()
    assert after_both < 0.9 * after_coarse, (after_coarse, after_both)
    assert dataclasses.replace(cfg, fine_steps=30).total_steps == 70
    assert dataclasses.replace(cfg, steps=0, fine_steps=30).total_steps == 0  # refine 0: none
    with pytest.raises(ValueError, match="fine_steps needs shrink"):
        RefineConfig(fine_steps=5)
    with pytest.raises(ValueError, match="ncc_window must be odd"):
        RefineConfig(ncc_window=4)  # a box with no centre: refused before any work


def test_the_refinements_volume_term_charges_volume_change_and_not_shear():
    """``volume_weight`` ν adds ν mean (log|J|)² (its pseudo-Huber with ``volume_scale``) of
    what ``regularise`` names: the whole field, or the change the correction makes to the
    start's log|J|. A shear changes no volume and
    costs it nothing; a dilation does; a start that dilates costs the field, not the
    correction. On a flat image the similarity is the same for every field."""
    flat = torch.full((1, 1, 24, 20), 0.5)
    y, x = torch.meshgrid(torch.arange(24.0), torch.arange(20.0), indexing="ij")
    shear = torch.stack([0.2 * x, torch.zeros_like(x)])[None]
    dilation = torch.stack([0.1 * (y - 12), 0.1 * (x - 10)])[None]
    zero = torch.zeros(1, 2, 24, 20)
    for mode in ("field", "correction"):
        cfg = RefineConfig(steps=1, similarity="mse", lam=0.0, regularise=mode, volume_weight=1.0)
        bare = Problem(flat, flat, zero, cfg)
        assert bare.loss(shear).item() == pytest.approx(bare.loss(zero).item(), abs=1e-6)
        # log 1.1² per pixel inside; one-sided differences at the border change nothing here
        expected = bare.loss(zero).item() + (2 * math.log(1.1)) ** 2
        assert bare.loss(dilation).item() == pytest.approx(expected, rel=1e-4)
        # ``volume_scale`` δ: the pseudo-Huber of log|J| instead of its square
        robust = Problem(flat, flat, zero, dataclasses.replace(cfg, volume_scale=0.05))
        x = 2 * math.log(1.1)
        expected = bare.loss(zero).item() + 2 * 0.05**2 * (math.sqrt(1 + (x / 0.05) ** 2) - 1)
        assert robust.loss(dilation).item() == pytest.approx(expected, rel=1e-4)
    dilated = Problem(flat, flat, dilation, dataclasses.replace(cfg, regularise="field"))
    kept = Problem(flat, flat, dilation, cfg)  # regularise="correction"
    assert dilated.loss(zero).item() > kept.loss(zero).item() + 0.03
    # ``volume_regularises`` "field" with diffusion on the correction: the start's dilation
    # costs volume, as with ``regularise`` "field", and no diffusion (λ 10 here), as with
    # "correction"; diffusion on the field charges it.
    stiff = dataclasses.replace(cfg, lam=10.0)
    volume_of_field = dataclasses.replace(stiff, volume_regularises="field")
    assert volume_of_field.volume_of == "field" and stiff.volume_of == "correction"
    volume_only = Problem(flat, flat, dilation, volume_of_field)
    assert volume_only.loss(zero).item() == pytest.approx(dilated.loss(zero).item(), rel=1e-6)
    diffused = Problem(flat, flat, dilation, dataclasses.replace(stiff, regularise="field"))
    assert diffused.loss(zero).item() > volume_only.loss(zero).item() + 0.01
    with pytest.raises(ValueError, match="volume_regularises"):
        RefineConfig(volume_regularises="velocity")
    with pytest.raises(ValueError, match="volume_weight"):
        RefineConfig(volume_weight=-1.0)
    with pytest.raises(ValueError, match="volume_scale"):
        RefineConfig(volume_scale=-0.1)


def test_refinement_follows_the_anatomy_features_where_intensities_say_nothing():
    """Flat images, shifted class probabilities: only the features' term moves the field,
    towards the shift; a model with a segmentation head supplies them (``anatomy``)."""
    shape = (16, 16)
    flat = torch.full((1, 1, *shape), 0.5)
    blob = blobs(shape, seed=0)
    features = (as_tensor(shifted(blob, (0.0, 1.5))), as_tensor(blob))  # moving, fixed
    cfg = RefineConfig(steps=60, lr=0.1, lam=0.1, similarity="mse", masked=False)
    still = refine(flat, flat, None, cfg, features=features)
    assert still.abs().max() == 0  # feature_weight 0: the features are not used
    moved = refine(
        flat, flat, None, dataclasses.replace(cfg, feature_weight=1.0), features=features
    )
    inner = moved[0, 1, 4:12, 4:12]
    assert inner.mean() < -0.5, inner.mean()  # fixed x is moving x - 1.5 along axis 1
    head = C2FRIIR(C2FConfig(spatial_dims=2, hidden_channels=(4, 4), segmentation_classes=3))
    probabilities = anatomy(head, flat, flat)
    assert probabilities is not None and probabilities[0].shape == (1, 2, *shape)
    assert anatomy(C2FRIIR(C2FConfig(spatial_dims=2, hidden_channels=(4, 4))), flat, flat) is None


def test_feature_gradient_equals_autograd_of_the_feature_mse():
    torch.manual_seed(0)
    encoder = FeatureEncoder(3, channels=4, stride=1)
    moving = as_tensor(blobs((20, 20, 20), seed=1))
    fixed = as_tensor(blobs((20, 20, 20), seed=2))
    em, ef = encoder(moving), encoder(fixed)
    smooth = torch.nn.functional.interpolate(
        torch.randn(1, 3, 3, 3, 3), size=(20, 20, 20), mode="trilinear", align_corners=False
    )
    phi = (0.7 * smooth).requires_grad_(True)
    analytic = feature_gradient(em, ef, phi)
    # Autograd differentiates the interpolation, the analytic form uses the central-difference
    # gradient of E_m: away from the border they agree in direction where the features are
    # smooth on the voxel scale (cosine 0.97 here; exactly on linear features, next test).
    loss = mse(warp(em, phi), ef) * phi[0, 0].numel()
    (auto,) = torch.autograd.grad(loss, phi, retain_graph=True)
    inner = (..., slice(2, -2), slice(2, -2), slice(2, -2))
    cosine = torch.nn.functional.cosine_similarity(
        analytic[inner].flatten(), auto[inner].flatten(), dim=0
    )
    assert cosine > 0.95
    # It is differentiable in the encoder without second derivatives of the warp.
    analytic.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_feature_gradient_is_exact_for_a_linear_image():
    """For a linear ramp (no interpolation error) the analytic and autograd gradients agree."""
    ramp = torch.linspace(0, 1, 12).view(1, 1, 12, 1, 1).expand(1, 1, 12, 10, 8).contiguous()
    features = torch.cat([ramp, 2 * ramp], 1)
    fixed = torch.cat([ramp + 0.05, 2 * ramp - 0.1], 1)
    phi = torch.zeros(1, 3, 12, 10, 8, requires_grad=True)
    loss = mse(warp(features, phi), fixed) * phi[0, 0].numel()
    (auto,) = torch.autograd.grad(loss, phi)
    analytic = feature_gradient(features, fixed, phi)
    inner = (..., slice(1, -1), slice(1, -1), slice(1, -1))
    assert torch.allclose(analytic[inner], auto[inner], atol=1e-4)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("share", [True, False])
def test_c2f_runs_in_2d_and_3d_and_returns_fields_on_the_grid(d, share):
    shape = SHAPES[d]
    moving, fixed = as_tensor(blobs(shape, seed=1)), as_tensor(blobs(shape, seed=0))
    model = C2FRIIR(
        C2FConfig(
            spatial_dims=d,
            levels=(4, 2, 1),
            level_steps=(2, 1, 1),
            hidden_channels=(4, 4),
            encoder_channels=3,
            share_cell=share,
            explicit_features=True,
        )
    )
    for cell in model.cells:  # a non-zero update, so every level moves the field
        torch.nn.init.normal_(cell.conv_out.weight, std=0.05)
    phis = model(moving, fixed)
    assert len(phis) == 4 and all(p.shape == (1, d, *shape) for p in phis)
    assert model(moving, fixed, return_all=False)[-1].shape == (1, d, *shape)
    phis[-1].pow(2).mean().backward()
    assert model.encoder.net[0].weight.grad.abs().sum() > 0  # E learns through the cell


@pytest.mark.parametrize(
    ("d", "added", "grown", "new_columns"),
    [
        # ∇ of the head's probability MSE, its own input with its own learned scale: columns
        # 3d … 4d after [phi, ∇ intensity MSE, ∇ feature MSE].
        (3, {"anatomy_gradient": True}, ["anatomy_log_scale", "cells.0.conv_in.weight"], 3),
        # a local correlation of radius 2: (2·2 + 1)^2 = 25 planes after the 3d gradients.
        (2, {"correlation_radius": 2}, ["cells.0.conv_in.weight"], 25),
    ],
)
def test_a_new_cell_input_grows_from_a_model_without_it_and_reaches_the_cell(
    d, added, grown, new_columns
):
    """The anatomy gradient and the local correlation are cell inputs of their own. A model
    grown into one computes what its source did (the new columns start at zero), and training
    reaches those columns and, through them, the encoder."""
    config = C2FConfig(
        spatial_dims=d,
        levels=(2, 1),
        level_steps=(1, 1),
        hidden_channels=(4, 4),
        encoder_channels=3,
        encoder_depth=1,
        segmentation_classes=3,
    )
    torch.manual_seed(0)
    source = C2FRIIR(config)
    for cell in source.cells:
        torch.nn.init.normal_(cell.conv_out.weight, std=0.05)
    model = C2FRIIR(dataclasses.replace(config, **added))
    assert load_state_grown(model, source) == grown
    moving, fixed = as_tensor(blobs(SHAPES[d], seed=1)), as_tensor(blobs(SHAPES[d], seed=0))
    with torch.no_grad():
        assert torch.allclose(model(moving, fixed)[-1], source(moving, fixed)[-1], atol=1e-6)
    model(moving, fixed)[-1].pow(2).mean().backward()
    weight = model.cells[0].conv_in.weight
    assert weight.shape[1] == 3 * d + new_columns and weight.grad[:, 3 * d :].abs().sum() > 0
    assert model.encoder.stem[0].weight.grad.abs().sum() > 0


def test_the_anatomy_gradient_needs_a_head():
    config = C2FConfig(spatial_dims=3, encoder_depth=1, anatomy_gradient=True)
    with pytest.raises(ValueError, match="segmentation head"):
        C2FRIIR(config)


@pytest.mark.parametrize("d", [2, 3])
def test_the_local_correlation_finds_the_offset_where_the_features_match(d):
    """Plane o of ``local_correlation`` compares the fixed features at x with the warped
    moving ones at x + o: where fixed(x) = warped(x + shift), the shift's plane is 1."""
    import itertools

    from model.networks.encoder import local_correlation

    torch.manual_seed(0)
    warped = torch.randn(2, 5, *(12,) * d)
    shift = (1, -2, 1)[:d]
    fixed = torch.roll(warped, shifts=[-s for s in shift], dims=list(range(2, 2 + d)))
    planes = local_correlation(warped, fixed, radius=2)
    offsets = list(itertools.product(range(5), repeat=d))
    assert planes.shape == (2, 5**d, *(12,) * d)
    inner = (..., *(slice(2, 10),) * d)  # away from the border, where the roll wraps
    match = planes[:, offsets.index(tuple(2 + s for s in shift))][inner]
    torch.testing.assert_close(match, torch.ones_like(match))
    assert planes[inner].abs().max() <= 1 + 1e-5
    assert planes[:, offsets.index((2,) * d)][inner].abs().mean() < 0.6


def test_the_anatomy_gradient_without_a_head_is_an_input_error(tmp_path, capsys):
    folder = labelled_folder(tmp_path / "data", (16, 16, 16), count=8)
    argv = ["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--arch", "c2f"]
    assert main([*argv, "--anatomy-gradient", "--iterations", "1", "--quiet"]) != 0
    assert "--segmentation-classes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # What only the architecture can refuse is an input error as well, not a traceback.
    assert main([*argv, "--levels", "4", "2", "--level-steps", "3", "--iterations", "1"]) == 1
    assert "levels and level_steps must be as long as each other" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_c2f_trains_through_the_cli_with_the_new_outer_loss_options(tmp_path):
    folder = labelled_folder(tmp_path / "data", (16, 16, 16), count=8)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(folder),
                "--out",
                str(run),
                "--arch",
                "c2f",
                "--iterations",
                "2",
                "--validate-every",
                "2",
                "--val-pairs",
                "1",
                "--hidden-channels",
                "4",
                "4",
                "--dice-weight",
                "1",
                "--volume-weight",
                "10",
                "--masked-similarity",
                "--flip",
                "--affine-rotate",
                "10",
                "--affine-scale",
                "0.1",
                "--intensity-gamma",
                "0.3",
                "--elastic",
                "2",
                "--elastic-spacing",
                "4",
                "--both-directions",
                "--threads",
                "1",
                "--quiet",
                "--model-option",
                "level_steps=[1,1]",
                "--model-option",
                "encoder_channels=2",
            ]
        )
        == 0
    )
    model, meta = load_checkpoint(run / "checkpoint.pt")
    assert meta["arch"] == "c2f" and model.config.level_steps == (1, 1)
    assert "val_dice" in meta["training"]["final_metrics"]
    settings = json.loads((run / "config.json").read_text())
    assert settings["elastic"] == 2 and settings["elastic_spacing"] == 4  # recorded to resume
    rows = (run / "log.csv").read_text().splitlines()
    column = rows[0].split(",").index("volume_change")
    assert all(float(row.split(",")[column]) >= 0 for row in rows[1:])  # logged every iteration
    evaluation = ["evaluate", "--data", str(folder), "--model", str(run / "checkpoint.pt")]
    evaluation += ["--pairs", "1", "--out", str(tmp_path / "eval"), "--threads", "1", "--quiet"]
    assert main([*evaluation, "--ship", str(tmp_path / "weights")]) == 0
    assert "volume change ν = 10.0" in (tmp_path / "weights" / "riir-model.md").read_text()
    # Steps on the fixed image's own grid reach the engine and the run's record.
    native = [*evaluation, "--refine-native", "2"]
    native[native.index(str(tmp_path / "eval"))] = str(tmp_path / "native")
    assert main(native) == 0
    head = json.loads((tmp_path / "native" / "pairs.jsonl").read_text().splitlines()[0])
    assert [m["options"]["refine_native"] for m in head["methods"].values()] == [2]


@pytest.mark.parametrize("d", [2, 3])
def test_unet_encoder_keeps_odd_grids_and_its_head_adds_class_probabilities(d):
    shape = (13, 11, 9)[:d]  # odd sizes: the U-Net's upsampling must meet each skip
    model = C2FRIIR(
        C2FConfig(
            spatial_dims=d,
            hidden_channels=(4, 4),
            encoder_channels=4,
            encoder_depth=2,
            segmentation_classes=3,
        )
    )
    image = as_tensor(blobs(shape, seed=2))
    features, logits = model.encode(image)
    coarse = tuple(-(-n // 2) for n in shape)  # E's grid: 1/encoder_stride
    assert features.shape == (1, 4 + 3, *coarse) and logits.shape == (1, 3, *coarse)
    assert torch.allclose(features[:, 4:].sum(1), torch.ones(1, *coarse))  # probabilities
    phis = model(image, as_tensor(blobs(shape, seed=3)))
    assert phis[-1].shape == (1, d, *shape)
    assert [t.shape for t in model.last_logits] == [logits.shape, logits.shape]


def test_the_segmentation_loss_trains_the_head_and_is_refused_without_one(
    tmp_path, capsys, monkeypatch
):
    """``--segmentation-weight`` adds the head's loss (logged), in pretraining and jointly,
    on the head's grid or with ``--segmentation-on-image`` on the image's; without a head it is
    an input error, and a head with the wrong class count says which to set."""
    from model.training import train
    from model.training.train import segmentation_loss

    folder = labelled_folder(tmp_path / "data", (16, 16, 16), count=8)
    base = ["train", "--data", str(folder), "--arch", "c2f", "--iterations", "2"]
    base += ["--validate-every", "2", "--val-pairs", "1", "--hidden-channels", "4", "4"]
    base += ["--encoder-channels", "2", "--encoder-depth", "1", "--threads", "1", "--quiet"]
    run = tmp_path / "run"
    argv = [*base, "--out", str(run), "--segmentation-classes", "3"]
    assert main([*argv, "--segmentation-weight", "1", "--segmentation-pretraining", "1"]) == 0
    rows = [r.split(",") for r in (run / "log.csv").read_text().splitlines()]
    column = {name: [r[i] for r in rows[1:]] for i, name in enumerate(rows[0])}
    assert all(float(v) > 0 for v in column["segmentation_loss"])
    assert column["similarity"][0] == "" and float(column["similarity"][1]) > 0  # pretraining
    assert 0 <= float(column["val_segmentation_dice"][-1]) <= 1
    model, _ = load_checkpoint(run / "checkpoint.pt")
    assert model.segmentation is not None and model.config.encoder_depth == 1
    # With the loss on the image's grid, in pretraining (iteration 1) and jointly (2).
    forms = []

    def recorded(logits, batch, on_image=False):
        forms.append(on_image)
        return segmentation_loss(logits, batch, on_image)

    monkeypatch.setattr(train, "segmentation_loss", recorded)
    on_image = tmp_path / "on-image"
    argv = [*base, "--out", str(on_image), "--segmentation-classes", "3"]
    argv += ["--segmentation-weight", "1", "--segmentation-pretraining", "1"]
    assert main([*argv, "--segmentation-on-image"]) == 0
    assert forms == [True, True]
    assert json.loads((on_image / "config.json").read_text())["segmentation_on_image"] is True
    assert main([*base, "--out", str(tmp_path / "no-head"), "--segmentation-weight", "1"]) != 0
    assert "--segmentation-classes" in capsys.readouterr().err
    wrong = [*base, "--out", str(tmp_path / "wrong"), "--segmentation-classes", "2"]
    assert main([*wrong, "--segmentation-weight", "1"]) != 0
    assert "set --segmentation-classes 3" in capsys.readouterr().err


def test_the_segmentation_loss_on_the_image_fits_the_outline_the_head_grid_blurs():
    """Free logits on a grid half the labels' size, fitted by each form of the loss and read
    as validation reads a head (``label_map``: upsampled, then argmax). Against labels
    averaged onto the coarse grid they learn that blurred outline; against the labels on
    their own grid (``on_image``, ``--segmentation-on-image``), the outline itself."""
    from model.networks.metrics import dice
    from model.training.train import Batch, label_map, one_hot, segmentation_loss

    n = 16
    z, y, x = np.mgrid[:n, :n, :n]
    labels = ((z - 7.3) ** 2 + (y - 8.1) ** 2 / 0.5 + (x - 7.6) ** 2 < 5.2**2).astype(np.int32)
    onehot = one_hot(torch.from_numpy(labels)[None, None], [1])
    batch = Batch(torch.zeros(1, 1, n, n, n), torch.zeros(1, 1, n, n, n))
    batch.moving_onehot = batch.fixed_onehot = onehot
    scores = {}
    for on_image in (False, True):
        logits = torch.zeros(1, 2, n // 2, n // 2, n // 2, requires_grad=True)
        optimizer = torch.optim.Adam([logits], lr=0.1)
        for _ in range(200):
            optimizer.zero_grad()
            segmentation_loss((logits, logits), batch, on_image).backward()
            optimizer.step()
        scores[on_image] = dice(labels, label_map(logits.detach(), (n, n, n), [1]), [1])[1]
    assert scores[False] < 0.97 and scores[True] > 0.99


def test_a_separately_pretrained_encoder_joins_a_run_under_its_cell(tmp_path, capsys):
    """``--init-encoder`` takes E and its head from another run and keeps the cell that
    ``--init`` (or random initialisation) gave; the card says where they came from, and an
    encoder of another shape is refused with the flags to set."""
    from model.training.train import transplant_encoder

    folder = labelled_folder(tmp_path / "data", (16, 16, 16), count=8)
    base = ["train", "--data", str(folder), "--arch", "c2f", "--iterations", "2"]
    base += ["--validate-every", "2", "--val-pairs", "1", "--hidden-channels", "4", "4"]
    base += ["--segmentation-classes", "3", "--segmentation-weight", "1"]
    base += ["--encoder-depth", "1", "--threads", "1", "--quiet"]
    small = [*base, "--encoder-channels", "2"]
    pre = tmp_path / "pre"
    assert main([*small, "--out", str(pre), "--segmentation-pretraining", "2"]) == 0
    pretrained = read_checkpoint(pre / "checkpoint.pt")["state_dict"]

    torch.manual_seed(1)
    model, _ = load_checkpoint(pre / "checkpoint.pt")
    for p in model.parameters():
        torch.nn.init.normal_(p)
    cell = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("cells.")}
    origin = transplant_encoder(model, str(pre / "checkpoint.pt"), 3)
    state = model.state_dict()
    assert origin["iterations"] == 2
    assert all(torch.equal(state[k], v) for k, v in pretrained.items() if k.startswith("encoder."))
    assert all(torch.equal(state[k], v) for k, v in cell.items())

    joined = tmp_path / "joined"
    argv = [*small, "--out", str(joined), "--init-encoder", str(pre / "checkpoint.pt")]
    assert main(argv) == 0
    _, meta = load_checkpoint(joined / "checkpoint.pt")
    assert meta["training"]["init"]["encoder"]["iterations"] == 2
    evaluation = ["evaluate", "--data", str(folder), "--model", str(joined / "checkpoint.pt")]
    evaluation += ["--pairs", "1", "--out", str(tmp_path / "eval"), "--threads", "1", "--quiet"]
    assert main([*evaluation, "--ship", str(tmp_path / "weights")]) == 0
    card = (tmp_path / "weights" / "riir-model.md").read_text()
    assert f"- Encoder and segmentation head from: `{pre / 'checkpoint.pt'}`" in card
    assert "Initialised from" not in card  # no --init: the cell started from random weights
    assert main([*argv[:-2], "--resume", "--init-encoder", str(pre / "checkpoint.pt")]) != 0
    assert "--init-encoder starts a new run" in capsys.readouterr().err
    wide = [*base, "--encoder-channels", "3", "--out", str(tmp_path / "wide")]
    assert main([*wide, "--init-encoder", str(pre / "checkpoint.pt")]) != 0
    assert "--encoder-channels" in capsys.readouterr().err


def test_the_cpu_conv3d_pads_channels_without_changing_the_answer():
    """``model.networks.conv.Conv3d`` pads narrow inputs to reach oneDNN: the same output as
    ``nn.Conv3d`` with the same weights, and the same parameters (checkpoints load as they are)."""
    from model.networks import conv

    torch.manual_seed(0)
    for kernel, dilation in ((3, 1), (3, 2), (1, 1)):
        fast = conv.Conv3d(5, 7, kernel, padding=dilation * (kernel // 2), dilation=dilation)
        plain = torch.nn.Conv3d(5, 7, kernel, padding=dilation * (kernel // 2), dilation=dilation)
        plain.load_state_dict(fast.state_dict())
        x = torch.rand(1, 5, 33, 32, 32, requires_grad=True)  # wide and large enough to pad
        assert torch.allclose(fast(x), plain(x), atol=1e-5)
        (grad,) = torch.autograd.grad(fast(x).sum(), x)
        (expected,) = torch.autograd.grad(plain(x).sum(), x)
        assert torch.allclose(grad, expected, atol=1e-4)
    assert conv.PAD_FROM_CHANNELS <= 5 and conv.PAD_FROM_VOXELS <= 33 * 32 * 32  # it padded
    assert conv.conv(2) is torch.nn.Conv2d and conv.conv(3) is conv.Conv3d


def test_pseudo_labels_lie_on_each_image_and_train_like_labels(tmp_path, capsys):
    """``riir pseudo-label`` writes the head's label map of every image on that image's own
    grid (an image stored in another orientation gets the same anatomy, its voxels permuted),
    and ``riir train --unlabelled`` reads them as labels of training-only subjects."""
    import SimpleITK as sitk

    from model.training.datasets import FolderPairs, Preprocessing
    from model.training.pseudo_labels import segment, write_pseudo_labels

    folder = labelled_folder(tmp_path / "data", (16, 16, 16), count=8)
    base = ["train", "--data", str(folder), "--arch", "c2f", "--validate-every", "2"]
    base += ["--val-pairs", "1", "--hidden-channels", "4", "4", "--encoder-channels", "2"]
    base += ["--encoder-depth", "1", "--segmentation-classes", "3", "--threads", "1", "--quiet"]
    teacher = tmp_path / "teacher"
    argv = [*base, "--out", str(teacher), "--iterations", "40", "--lr", "1e-2"]
    argv += ["--segmentation-pretraining", "40"]
    assert main(argv) == 0

    images = tmp_path / "unlabelled"
    images.mkdir()
    lps = sitk.GetImageFromArray((blobs((16, 16, 16), seed=40) * 200).astype(np.uint8))
    sitk.WriteImage(lps, str(images / "lps.nii.gz"))
    flipped = sitk.Flip(lps, [True, False, False])  # same physical image, x axis stored reversed
    sitk.WriteImage(flipped, str(images / "flipped.nii.gz"))
    out = tmp_path / "pseudo"
    pseudo = ["pseudo-label", "--model", str(teacher / "checkpoint.pt"), "--images", str(images)]
    assert main([*pseudo, "--out", str(out), "--quiet"]) == 0
    assert "wrote 2 label maps" in capsys.readouterr().out
    model, meta = load_checkpoint(teacher / "checkpoint.pt")
    for name, image in (("lps", lps), ("flipped", flipped)):
        written = sitk.ReadImage(str(out / "label" / f"{name}.nii.gz"))
        assert written.GetSize() == image.GetSize() and written.GetOrigin() == image.GetOrigin()
        assert written.GetDirection() == image.GetDirection()
        assert (out / "img" / f"{name}.nii.gz").resolve() == (images / f"{name}.nii.gz").resolve()
    on_lps = sitk.GetArrayFromImage(segment(model, lps, Preprocessing.of_meta(meta), [1, 2]))
    assert set(np.unique(on_lps)) <= {0, 1, 2}
    assert not np.array_equal(on_lps, on_lps[..., ::-1])  # the flip below would hide nothing
    from_flipped = sitk.ReadImage(str(out / "label" / "flipped.nii.gz"))
    assert np.array_equal(
        sitk.GetArrayFromImage(sitk.Flip(from_flipped, [True, False, False])), on_lps
    )

    source = FolderPairs(folder, val_count=1, unlabelled=[out])
    assert source.subjects["unlabelled/lps"].labels is not None
    student = [*base, "--out", str(tmp_path / "student"), "--iterations", "2"]
    assert main([*student, "--unlabelled", str(out), "--dice-weight", "1"]) == 0
    (out / "label" / "flipped.nii.gz").unlink()
    with pytest.raises(InputError, match="no label map for flipped"):
        FolderPairs(folder, val_count=1, unlabelled=[out])
    headless = C2FRIIR(C2FConfig(spatial_dims=3, hidden_channels=(4, 4)))
    with pytest.raises(InputError, match="no segmentation head"):
        write_pseudo_labels(headless, meta, images, tmp_path / "again")


def test_a_refinement_moved_to_a_finer_grid_keeps_its_lengths_in_millimetres():
    """``on_finer_grid``: brain-3d's 2-mm refinement on a 1-mm scan becomes the settings
    measured there (NCC window 9, Adam's step 0.2 voxels), solved on that grid directly,
    without the features that exist on the model's grid only; λ, ν, δ and stride stay."""
    from model.networks.refine import for_model, on_finer_grid

    brain = for_model(
        {
            "shrink": 2,
            "fine_steps": 5,
            "stride": 2,
            "ncc_window": 5,
            "lam": 4,
            "volume_weight": 1,
            "volume_scale": 0.25,
        },
        25,
    )
    native = on_finer_grid(brain, 2.0, 8)
    assert (native.steps, native.total_steps, native.shrink, native.fine_steps) == (8, 8, 1, 0)
    assert (native.ncc_window, native.lr, native.margin) == (9, pytest.approx(0.2), 8)
    assert native.feature_weight == 0 and brain.feature_weight > 0
    assert (native.lam, native.volume_weight, native.volume_scale, native.stride) == (4, 1, 0.25, 2)
    same = on_finer_grid(brain, 1.0, 3)  # a scan on the model's own spacing: its fine level
    assert (same.ncc_window, same.lr, same.margin, same.shrink) == (5, brain.lr, brain.margin, 1)
    assert on_finer_grid(brain, 0.5, 1).ncc_window == 3  # a coarser scan: the window shrinks
    assert on_finer_grid(brain, 2.0, 0).total_steps == 0
    with pytest.raises(ValueError, match="scale"):
        on_finer_grid(brain, 0.0, 1)


def test_refinement_settings_parse_from_text_with_their_fields_types():
    """The benchmarks' ``--setting KEY=VALUE,…``: each value as its field's type."""
    from model.networks.refine import parse_settings

    assert parse_settings("steps=8,lr=0.2,masked=false,regularise=correction") == {
        "steps": 8,
        "lr": 0.2,
        "masked": False,
        "regularise": "correction",
    }
    assert parse_settings("") == {}
    with pytest.raises(ValueError, match="unknown refinement setting 'window'"):
        parse_settings("window=5")
