"""RIIR: a learned optimiser that repeats a ConvGRU update driven by a similarity gradient.

    phi_0 = 0 (identity)
    for t = 0 … T-1:
        {Δphi_t, h_{t+1}} = g_θ(phi_t, ∇_phi L_inner(I_mov ∘ phi_t, I_fix), h_t)
        phi_{t+1} = phi_t + Δphi_t

``g_θ`` is the RIIR cell (conv → ConvGRU → conv → ConvGRU → conv), weights shared across
steps, the same code for 2-D and 3-D. Choices the paper leaves open are fields of
``RIIRConfig`` and written down in docs/method.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.networks.configs import INPUTS, UPSAMPLING, RIIRConfig
from model.networks.conv import conv as conv_class
from model.networks.losses import inner_gradient
from model.networks.warp import resize, warp


def input_blocks(config: RIIRConfig) -> list[int]:
    """The cell input's channels by part: [phi, ∇L, images], a part absent being 0 wide."""
    d = config.spatial_dims
    gradient = d if config.inputs.startswith("gradient") else 0
    images = 0 if config.inputs == "gradient" else 2
    return [d, gradient, images]


class ConvGRU(nn.Module):
    """Convolutional GRU cell: h' = (1 - z) ⊙ h + z ⊙ tanh(W x + U (r ⊙ h))."""

    def __init__(self, channels: int, hidden: int, spatial_dims: int, kernel: int = 3):
        super().__init__()
        conv = conv_class(spatial_dims)
        self.hidden = hidden
        self.gates = conv(channels + hidden, 2 * hidden, kernel, padding=kernel // 2)
        self.candidate_x = conv(channels, hidden, kernel, padding=kernel // 2)
        self.candidate_h = conv(hidden, hidden, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden, *x.shape[2:])
        reset, update = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
        candidate = torch.tanh(self.candidate_x(x) + self.candidate_h(reset * h))
        return (1 - update) * h + update * candidate

    def channel_blocks(self) -> dict[str, tuple[list[int], list[int]]]:
        """The gates' rows are [reset, update], their columns [x, h] (``forward``): a model
        with more channels grows each block apart
        (``model.networks.checkpoint.load_state_grown``)."""
        x, h = self.candidate_x.in_channels, self.hidden
        return {"gates.weight": ([h, h], [x, h]), "gates.bias": ([h, h], [])}


class Stateless(nn.Module):
    """Stands in for a ConvGRU whose hidden state is switched off: conv + ReLU, no memory."""

    def __init__(self, channels: int, hidden: int, spatial_dims: int, kernel: int = 3):
        super().__init__()
        self.conv = conv_class(spatial_dims)(channels, hidden, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        return F.relu(self.conv(x))


class RIIRCell(nn.Module):
    """g_θ: conv → ConvGRU (h¹) → dilated conv → ConvGRU (h²) → conv to a D-channel update."""

    def __init__(self, in_channels: int, config: RIIRConfig):
        super().__init__()
        d, (c1, c2) = config.spatial_dims, config.hidden_channels
        conv = conv_class(d)
        self.stateful = config.hidden_states
        recurrent = [ConvGRU if on else Stateless for on in config.hidden_states]
        self.conv_in = conv(in_channels, c1, 3, padding=1)
        self.rnn1 = recurrent[0](c1, c1, d, config.gru_kernel)
        self.conv_mid = conv(c1, c2, 3, padding=2, dilation=2)
        self.rnn2 = recurrent[1](c2, c2, d, config.gru_kernel)
        self.conv_out = conv(c2, d, 3, padding=1)
        self.input_blocks = input_blocks(config)
        # Start as the identity optimiser (Δphi = 0): training begins from a stable point.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def channel_blocks(self) -> dict[str, tuple[list[int], list[int]]]:
        """conv_in's columns are the input's parts (``input_blocks``), so a gradient model can
        grow into a gradient+explicit one (``model.networks.checkpoint.load_state_grown``)."""
        return {"conv_in.weight": ([self.conv_in.out_channels], self.input_blocks)}

    def forward(
        self, x: torch.Tensor, hidden: list[torch.Tensor | None]
    ) -> tuple[torch.Tensor, list[torch.Tensor | None], torch.Tensor]:
        """The update Δphi, the hidden states, and the features it was read from."""
        h1 = self.rnn1(F.relu(self.conv_in(x)), hidden[0])
        h2 = self.rnn2(F.relu(self.conv_mid(h1)), hidden[1])
        new_hidden = [h if on else None for h, on in zip((h1, h2), self.stateful, strict=True)]
        return self.conv_out(h2), new_hidden, h2


class ConvexUpsampling(nn.Module):
    """Coarse field (B, D, *m) → (B, D, *(s·m)): each fine voxel is a convex combination of
    the 2^D coarse voxels that linear interpolation reads for it, with weights (a softmax)
    that a 1×1 convolution reads from the cell's features — RAFT's upsampling (Teed & Deng,
    2020; there over 3^D neighbours) in D dimensions. It can keep a field's edges at the
    anatomy's edges, where interpolation blurs them across a coarse voxel.

    The weights start as linear interpolation's (``align_corners=False``, edges replicated:
    what ``F.interpolate`` does), so a model with this module computes what one without it
    did until training moves them (``model.networks.checkpoint.load_state_grown``). 2^D rather than
    RAFT's 3^D neighbours: a third of the cost, which on a CPU is most of a training step."""

    def __init__(self, features: int, spatial_dims: int, stride: int):
        super().__init__()
        self.dims, self.stride = spatial_dims, stride
        # Fine voxel r of a coarse voxel sits f = (r + 0.5) / s - 0.5 coarse voxels from its
        # centre, between the coarse voxels first(r) = -1 (f < 0) or 0, and first(r) + 1.
        self._fractions = [(r + 0.5) / stride - 0.5 for r in range(stride)]
        self._first = [-1 if f < 0 else 0 for f in self._fractions]
        self.weights = conv_class(spatial_dims)(features, stride**spatial_dims * 2**spatial_dims, 1)
        nn.init.zeros_(self.weights.weight)
        with torch.no_grad():
            self.weights.bias.copy_(self.linear_logits())

    def _subvoxels(self) -> list[tuple[int, ...]]:
        return list(itertools.product(range(self.stride), repeat=self.dims))

    def _corners(self) -> list[tuple[int, ...]]:
        return list(itertools.product(range(2), repeat=self.dims))

    def linear_logits(self) -> torch.Tensor:
        """log of linear interpolation's weights, (s^D, 2^D) flattened; a weight of 0 (the
        centre of an odd stride) becomes -30 (e^-30 ≈ 1e-13 of the total: nothing)."""
        logits = []
        for sub in self._subvoxels():
            for corner in self._corners():
                weight = 1.0
                for r, k in zip(sub, corner, strict=True):
                    t = self._fractions[r] - self._first[r]  # position between the two, [0, 1)
                    weight *= t if k else 1.0 - t
                logits.append(math.log(weight) if weight > 0 else -30.0)
        return torch.tensor(logits)

    def forward(self, coarse: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        d, s, m = self.dims, self.stride, coarse.shape[2:]
        weights = self.weights(features).unflatten(1, (s**d, 2**d)).softmax(2)
        padded = F.pad(coarse, [1] * (2 * d), mode="replicate")
        fine = []
        for i, sub in enumerate(self._subvoxels()):
            combined = coarse.new_zeros(())
            for j, corner in enumerate(self._corners()):
                starts = [1 + self._first[r] + k for r, k in zip(sub, corner, strict=True)]
                window = (..., *(slice(a, a + n) for a, n in zip(starts, m, strict=True)))
                combined = combined + weights[:, i, j].unsqueeze(1) * padded[window]
            fine.append(combined)
        # (B, D, s, …, s, m1, …, mD) → (B, D, m1, s, …, mD, s) → (B, D, s·m1, …, s·mD)
        grid = torch.stack(fine, 2).unflatten(2, (s,) * d)
        order = [0, 1] + [i for a in range(d) for i in (2 + d + a, 2 + a)]
        return grid.permute(order).reshape(*grid.shape[:2], *(s * n for n in m))


ProgressCallback = Callable[[int, int], None]


class RIIR(nn.Module):
    def __init__(self, config: RIIRConfig):
        super().__init__()
        if config.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}, not {config.inputs!r}")
        if config.upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling must be one of {UPSAMPLING}, not {config.upsampling!r}")
        self.config = config
        self.cell = RIIRCell(sum(input_blocks(config)), config)
        self.upsampling = None
        if config.upsampling == "convex" and config.cell_stride > 1:
            self.upsampling = ConvexUpsampling(
                config.hidden_channels[1], config.spatial_dims, config.cell_stride
            )

    # Parameters whose initialisation leaves the function unchanged: a model without them
    # grows into one with them (model.networks.checkpoint.load_state_grown).
    starts_neutral = ("upsampling.",)

    @property
    def shape_multiple(self) -> int:
        """Grids a multiple of the stride (the engine and training resample to one) keep the
        convex upsampling exact; other shapes still work (``_fine``)."""
        return 1 if self.upsampling is None else self.upsampling.stride

    def _coarse(self, x: torch.Tensor) -> torch.Tensor:
        """Average onto the cell's grid (identity at stride 1)."""
        s = self.config.cell_stride
        if s == 1:
            return x
        size = [max(1, -(-n // s)) for n in x.shape[2:]]
        pool = F.adaptive_avg_pool2d if x.dim() == 4 else F.adaptive_avg_pool3d
        return pool(x, size)

    def _fine(
        self, x: torch.Tensor, shape: torch.Size, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """From the cell's grid back to the image grid (voxel units unchanged: displacements
        are always in voxels of the full-resolution grid). Convex upsampling gives s·m
        voxels; where the image is not a multiple of s (``shape_multiple``), interpolation
        covers the rest with the same cell-centre convention, and the start is then linear
        interpolation twice over rather than once."""
        if x.shape[2:] == shape:
            return x
        if self.upsampling is not None and features is not None:
            x = self.upsampling(x, features)
            if x.shape[2:] == shape:
                return x
        return resize(x, shape)

    def _cell_input(
        self,
        phi_coarse: torch.Tensor,
        phi: torch.Tensor,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        inner_loss: str,
    ) -> torch.Tensor:
        cfg = self.config
        _, gradient_width, images_width = self.cell.input_blocks
        parts = [phi_coarse]
        if gradient_width:
            grad = inner_gradient(
                inner_loss,
                moving,
                fixed,
                phi if cfg.second_order else phi.detach(),
                ncc_window=cfg.ncc_window,
                create_graph=cfg.second_order and torch.is_grad_enabled(),
            )
            parts.append(self._coarse(grad * cfg.gradient_scale))
        if images_width:
            first = moving if cfg.inputs == "implicit" else warp(moving, phi)
            parts += [self._coarse(first), self._coarse(fixed)]
        return torch.cat(parts, 1)

    def forward(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        steps: int | None = None,
        progress: ProgressCallback | None = None,
        return_all: bool = True,
        inner_loss: str | None = None,
    ) -> list[torch.Tensor]:
        """Displacements phi_1 … phi_T (B, D, *S) in voxels; only phi_T if not ``return_all``
        (inference keeps one iterate to save memory). ``inner_loss`` overrides the similarity
        whose gradient drives the cell (default: the one it was trained with)."""
        steps = self.config.steps if steps is None else steps
        inner_loss = inner_loss or self.config.inner_loss
        shape = fixed.shape[2:]
        phi_coarse = fixed.new_zeros(fixed.shape[0], len(shape), *self._coarse(fixed).shape[2:])
        phi = self._fine(phi_coarse, shape)
        hidden: list[torch.Tensor | None] = [None, None]
        out: list[torch.Tensor] = []
        for t in range(steps):
            cell_input = self._cell_input(phi_coarse, phi, moving, fixed, inner_loss)
            delta, hidden, features = self.cell(cell_input, hidden)
            phi_coarse = phi_coarse + delta
            phi = self._fine(phi_coarse, shape, features)
            if return_all or t == steps - 1:
                out.append(phi)
            if progress is not None:
                progress(t + 1, steps)
        return out
