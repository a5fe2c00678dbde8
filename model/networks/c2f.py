"""Coarse-to-fine RIIR on learned features (``--arch c2f``; ``hippocampus-3d`` 0.5.0).

    E_m, E_f = E(I_mov), E(I_fix)                       (shared encoder, once per image)
    (with a segmentation head S: E ← [E, softmax(S(E))], the class probabilities as features)
    for each level s in ``levels`` (grid 1/s of the working grid), coarse to fine:
        phi ← phi of the coarser level, upsampled (0 at the first level), hidden states too
        repeat ``level_steps`` times:
            x = [phi, ∇_phi MSE(I_mov∘phi, I_fix), ∇_phi MSE(E_m∘phi, E_f)]   (at level s)
                (``anatomy_gradient``: and ∇_phi MSE(P_m∘phi, P_f) of the head's foreground
                probabilities P alone, so the pull of the anatomy is not summed into that of
                the other features and the cell can weigh it on its own)
            {Δphi, h} = g_θ(x, h);  phi ← phi + Δphi

Most steps run on coarse grids, where a step costs 1/s^D of a full-resolution one, and the
first steps of a large displacement are taken where it is a few voxels long. The feature
MSE's gradient is analytic (``model.networks.encoder.feature_gradient_terms``), so E learns
through the cell's input with first-order meta-gradients only. The cell is
``model.networks.riir.RIIRCell``, shared by the levels (``share_cell``) or one per level. phi
lives in voxels of its level inside the loop; every returned iterate is on the working grid
in its voxels, as ``RIIR.forward`` returns them, so training, validation and the engine treat
it like RIIR.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.networks.configs import C2FConfig, RIIRConfig
from model.networks.encoder import (
    build_encoder,
    feature_gradient_terms,
    local_correlation,
    segmentation_head,
)
from model.networks.losses import inner_gradient
from model.networks.riir import ProgressCallback, RIIRCell
from model.networks.warp import resize, resize_displacement, warp


class C2FRIIR(nn.Module):
    def __init__(self, config: C2FConfig):
        super().__init__()
        if len(config.levels) != len(config.level_steps) or not config.levels:
            raise ValueError("levels and level_steps must be as long as each other (≥ 1)")
        self.config = config
        d, c = config.spatial_dims, config.encoder_channels
        self.encoder = build_encoder(d, c, config.encoder_stride, config.encoder_depth)
        classes = config.segmentation_classes
        self.segmentation = segmentation_head(d, c, classes) if classes else None
        features = c + classes
        if config.anatomy_gradient and classes < 2:
            raise ValueError("anatomy_gradient needs a segmentation head: segmentation_classes ≥ 2")
        anatomy = d if config.anatomy_gradient else 0
        explicit = 2 * features if config.explicit_features else 0
        correlation = (2 * config.correlation_radius + 1) ** d if config.correlation_radius else 0
        in_channels = 3 * d + anatomy + explicit + correlation
        cell_config = RIIRConfig(
            spatial_dims=d,
            hidden_channels=config.hidden_channels,
            hidden_states=config.hidden_states,
            gru_kernel=config.gru_kernel,
        )
        count = 1 if config.share_cell else len(config.levels)
        self.cells = nn.ModuleList(RIIRCell(in_channels, cell_config) for _ in range(count))
        # [phi, ∇ intensity and feature MSE, ∇ probability MSE, features, correlation]: blocks
        # kept apart when a checkpoint grows into a model with more of them (load_state_grown).
        for cell in self.cells:
            cell.input_blocks = [d, 2 * d, anatomy, explicit, correlation]
        start = math.log(config.gradient_scale)
        self.log_scales = nn.Parameter(torch.full((2,), start))
        if config.anatomy_gradient:
            self.anatomy_log_scale = nn.Parameter(torch.full((1,), start))

    # A model grown with the anatomy gradient computes what its source did: the cell's new
    # input columns start at zero, so this scale may start anywhere.
    starts_neutral = ("anatomy_log_scale",)

    # The engine and training resample to a multiple of this: adaptive pooling handles any
    # grid, so none is needed.
    shape_multiple = 1

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """E(image), with the head's class probabilities appended, and the head's logits
        (None without a head), both on E's grid."""
        features = self.encoder(image)
        if self.segmentation is None:
            return features, None
        logits = self.segmentation(features)
        return torch.cat([features, logits.softmax(1)], 1), logits

    def _cell_input(
        self, phi: torch.Tensor, level: dict[str, torch.Tensor], stride: int
    ) -> torch.Tensor:
        # Gradients per level voxel are ~stride × those per working-grid voxel: divided back,
        # the shared cell sees inputs of one scale at every level.
        cfg = self.config
        scales = self.log_scales.exp() / stride
        g_image = inner_gradient("mse", level["moving"], level["fixed"], phi.detach())
        terms = feature_gradient_terms(level["moving_features"], level["fixed_features"], phi)
        parts = [phi, g_image * scales[0], terms.mean(1) * scales[1]]
        if cfg.anatomy_gradient:
            # The features end with the head's probabilities: their foreground channels' mean.
            foreground = terms[:, -(cfg.segmentation_classes - 1) :]
            parts.append(foreground.mean(1) * self.anatomy_log_scale.exp() / stride)
        if cfg.explicit_features or cfg.correlation_radius:
            warped = warp(level["moving_features"], phi.detach())
        if cfg.explicit_features:
            parts += [warped, level["fixed_features"]]
        if cfg.correlation_radius:
            parts.append(local_correlation(warped, level["fixed_features"], cfg.correlation_radius))
        return torch.cat(parts, 1)

    def probabilities(self, image: torch.Tensor) -> torch.Tensor | None:
        """The head's foreground class probabilities on the image's grid (B, K, *S), or None
        without a head: the anatomy test-time refinement may follow
        (``model.networks.refine``)."""
        _, logits = self.encode(image)
        if logits is None:
            return None
        return resize(logits, tuple(image.shape[2:])).softmax(1)[:, 1:]

    def forward(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        steps: int | None = None,
        progress: ProgressCallback | None = None,
        return_all: bool = True,
        inner_loss: str | None = None,
    ) -> list[torch.Tensor]:
        """Displacements (B, D, *S) in voxels after every step (only the last if not
        ``return_all``). ``steps`` changes the finest level's count (T = the sum);
        ``inner_loss`` is accepted for the engine's sake: the similarity is always MSE."""
        cfg = self.config
        counts = list(cfg.level_steps)
        if steps is not None:
            counts[-1] = max(0, steps - sum(counts[:-1]))
        total = sum(counts)
        shape = tuple(fixed.shape[2:])
        moving_features, moving_logits = self.encode(moving)
        fixed_features, fixed_logits = self.encode(fixed)
        # The auxiliary segmentation loss of training reads these (model.training.train).
        self.last_logits = (moving_logits, fixed_logits)
        features = {"moving_features": moving_features, "fixed_features": fixed_features}
        phi: torch.Tensor | None = None
        hidden: list[torch.Tensor | None] = [None, None]
        out: list[torch.Tensor] = []
        t = 0
        for index, (stride, count) in enumerate(zip(cfg.levels, counts, strict=True)):
            size = tuple(max(1, -(-n // stride)) for n in shape)
            level = {
                "moving": resize(moving, size),
                "fixed": resize(fixed, size),
                **{k: resize(v, size) for k, v in features.items()},
            }
            if phi is None:
                phi = fixed.new_zeros(fixed.shape[0], len(shape), *size)
            else:
                phi = resize_displacement(phi, size)
                hidden = [None if h is None else resize(h, size) for h in hidden]
            cell = self.cells[0 if cfg.share_cell else index]
            for _ in range(count):
                delta, hidden, _ = cell(self._cell_input(phi, level, stride), hidden)
                phi = phi + delta
                t += 1
                if return_all or t == total:
                    out.append(resize_displacement(phi, shape))
                if progress is not None:
                    progress(t, total)
        if not out:  # no steps at all: the identity
            out.append(fixed.new_zeros(fixed.shape[0], len(shape), *shape))
        return out
