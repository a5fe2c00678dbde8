"""Test-time refinement: a few Adam steps of classical registration after the network.

Given the network's displacement phi (B, D, *S, voxels, as RIIR returns it), minimise

    L(phi) = L_sim(M · (I_mov ∘ phi), M · I_fix) + λ L_reg(phi) + ν L_vol(phi)

by ``steps`` Adam steps starting from it, with ``L_sim`` MSE or local NCC averaged over a
mask M of the real image (``real_box``: the hippocampus crops are half edge-repeat padding,
whose streaks would pull the field), ``L_reg`` the diffusion regulariser of
``model.networks.losses`` and ``L_vol`` (``volume_weight`` ν, off by default) the mean
(log|J|)² of local volume change, or its pseudo-Huber (``volume_scale``). Diffusion charges
every gradient of the field, shears included; L_vol charges only what the evaluation's std
log|J| measures, so a lower λ with some ν buys more similarity at the same std log|J| (the
whole-brain measurements, docs/method.md).
Starting from phi = 0 instead is plain instance optimisation.

Only a window around the real image (``margin`` voxels wider) is optimised: outside it the
similarity is not measured, so the field would move there only through the regulariser.
Working on the window costs a quarter of the whole 64³ grid on these crops. The regulariser
covers the window and its one-voxel rim, so the correction cannot jump at the window's edge.

With ``features`` (the class probabilities of a model's segmentation head, for both images,
on their grid) and ``feature_weight`` > 0, ``L_sim`` also holds their masked MSE: the
anatomy the network's encoder sees pulls the refinement, as it drives the network.

The correction may be a voxel field (``stride`` 1) or a coarse one upsampled linearly
(``stride`` s > 1): fewer unknowns and an implicitly smoother field.

With ``shrink`` f > 1 the whole problem is solved on a grid f times coarser (both images,
the features and the start averaged onto it, as ANTs' shrink factors do): a step then costs
about 1/f^D of one on the full grid, and the correction found there is brought back by
linear interpolation (``model.networks.warp.resize_displacement``, the networks' owner of
moves between grids). ``stride``, ``ncc_window`` and ``margin`` count voxels of the grid the
problem is solved on. ``fine_steps`` then continue on the model's own grid from what the
coarse grid found: a two-level pyramid, whose cheap coarse steps make the large corrections
and whose few fine ones the detail the coarse grid cannot see.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from model.networks.losses import (
    box_statistics,
    diffusion,
    local_ncc,
    log_jacobian,
    pseudo_huber,
)
from model.networks.warp import resize, resize_displacement, warp_window

SIMILARITIES = ("mse", "ncc")
REGULARISED = ("field", "correction")


@dataclass
class RefineConfig:
    steps: int = 50
    lr: float = 0.1  # Adam's step is ~lr per unknown: voxels per step
    lam: float = 1.0  # λ of the diffusion regulariser
    similarity: str = "mse"  # mse | ncc
    ncc_window: int = 9
    stride: int = 1  # 1: a voxel correction; s > 1: a coarse one, upsampled
    masked: bool = True  # the similarity on the real image (``real_box``), else everywhere
    feature_weight: float = 0.0  # weight of the features' MSE (needs ``features``)
    margin: int = 4  # voxels of the window beyond the mask
    shrink: int = 1  # solve on a grid this many times coarser (1: the model's own grid)
    fine_steps: int = 0  # then this many on the model's own grid (needs shrink > 1)
    # What λ L_reg smooths: the whole "field" (start + correction), or only the "correction",
    # which leaves the network's field as it is and adds a smooth change to it.
    regularise: str = "field"
    # ν of L_vol, mean (log|J|)² of what ``volume_of`` names: of the whole field, or of the
    # change the correction makes to the start's log|J| (the network's own volume change,
    # a heart's contraction say, then costs nothing).
    volume_weight: float = 0.0
    # δ of L_vol: 0 charges (log|J|)²; δ > 0 the pseudo-Huber of log|J|, quadratic below δ
    # and linear beyond it, so the few voxels whose anatomy asks for a large change (one
    # brain's ventricles four times another's) cost less than the many small changes.
    volume_scale: float = 0.0
    # What L_vol charges, where it differs from ``regularise`` ("": the same): "field" with
    # ``regularise`` "correction" keeps the network's own shape changes free of diffusion
    # (a brain's ventricles compressed four-fold) and still charges the whole field's volume.
    volume_regularises: str = ""

    def __post_init__(self) -> None:
        """Refuse settings that could not run (ValueError): they come from requests and from
        model files, and a bad one should say so before any work, not fail in the middle."""
        problems = []
        for name, low, strict in (
            ("steps", 0, False),
            ("lr", 0, True),
            ("lam", 0, False),
            ("ncc_window", 1, False),
            ("stride", 1, False),
            ("feature_weight", 0, False),
            ("margin", 0, False),
            ("shrink", 1, False),
            ("fine_steps", 0, False),
            ("volume_weight", 0, False),
            ("volume_scale", 0, False),
        ):
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or value < low or (strict and value == low):
                problems.append(f"{name} must be a number {'>' if strict else '>='} {low}")
        for name in ("steps", "ncc_window", "stride", "margin", "shrink", "fine_steps"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be a whole number")
        if isinstance(self.ncc_window, int) and self.ncc_window % 2 == 0:
            problems.append("ncc_window must be odd (a box centred on each voxel)")
        if self.fine_steps and self.shrink == 1:
            problems.append("fine_steps needs shrink > 1 (on the model's grid, give steps)")
        if self.similarity not in SIMILARITIES:
            problems.append(f"similarity must be one of {SIMILARITIES}")
        if self.regularise not in REGULARISED:
            problems.append(f"regularise must be one of {REGULARISED}")
        if self.volume_regularises not in ("", *REGULARISED):
            problems.append(f"volume_regularises must be one of {REGULARISED} or empty")
        if not isinstance(self.masked, bool):
            problems.append("masked must be true or false")
        if problems:
            raise ValueError("bad refinement settings: " + "; ".join(dict.fromkeys(problems)))

    @property
    def volume_of(self) -> str:
        """What L_vol charges: ``volume_regularises``, else what ``regularise`` names."""
        return self.volume_regularises or self.regularise

    @property
    def total_steps(self) -> int:
        """The Adam steps a refinement runs in all (what its progress counts); none without
        ``steps``."""
        return self.steps + self.fine_steps if self.steps else 0


# What a request's ``refine`` steps run (worker.inference.engine): of the settings measured on
# hippocampus validation pairs (docs/method.md), the one with the most Dice.
REQUEST = RefineConfig(
    steps=0, similarity="ncc", stride=4, lam=10.0, regularise="correction", feature_weight=5.0
)


def for_model(settings: Mapping[str, Any] | None, steps: int) -> RefineConfig:
    """What a model's ``steps`` of refinement run: ``REQUEST`` with the model's own settings
    over it (``meta.preprocessing.refine_settings``, chosen on that model's validation split:
    a 2-D cardiac slice wants a stiffer correction than a 64³ hippocampus crop)."""
    settings = dict(settings or {})
    known = {f.name for f in dataclasses.fields(RefineConfig)} - {"steps"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(
            f"unknown refinement settings {unknown} in the model's refine_settings; "
            f"known: {sorted(known)}"
        )
    return dataclasses.replace(REQUEST, **settings, steps=steps)


def on_finer_grid(cfg: RefineConfig, scale: float, steps: int) -> RefineConfig:
    """``cfg``'s refinement for ``steps`` Adam steps on a grid ``scale`` times finer than the
    one it was chosen on (the fixed scan's own grid after the model's, ``scale`` = model
    spacing / scan spacing): solved there directly (no ``shrink``, no ``fine_steps``), with
    the NCC window, the margin and Adam's step kept at their size in millimetres, and λ, ν and
    δ as they are (the diffusion and the volume change are ratios, the same in any voxel).
    ``stride`` stays in voxels: the correction gets finer with the grid, which is the point.
    Without the model's features, which exist on the model's grid only. On the 1-mm OASIS
    brains, ``brain-3d``'s settings become window 9, lr 0.2: the measured ones
    (``benchmarks/native_grid_refine.py``)."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, not {scale}")
    radius = max(0, round((cfg.ncc_window - 1) / 2 * scale))
    return dataclasses.replace(
        cfg,
        steps=steps,
        shrink=1,
        fine_steps=0,
        feature_weight=0.0,
        ncc_window=2 * radius + 1,
        margin=max(0, round(cfg.margin * scale)),
        lr=cfg.lr * scale,
    )


def parse_settings(text: str) -> dict[str, Any]:
    """``KEY=VALUE,…`` of ``RefineConfig`` fields, each value as its field's type (the
    benchmarks' ``--setting``); an unknown key is refused."""
    types = {f.name: str(f.type) for f in dataclasses.fields(RefineConfig)}
    parse: dict[str, Callable[[str], Any]] = {
        "int": int,
        "float": float,
        "bool": lambda v: v.lower() in ("1", "true", "yes"),
    }
    values: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in types:
            raise ValueError(f"unknown refinement setting {key!r}; known: {sorted(types)}")
        values[key] = parse.get(types[key], str)(value)
    return values


def real_box(image: torch.Tensor) -> list[slice]:
    """Bounding box of the voxels that are not edge-repeat padding, over the batch: along
    each axis, the slices that differ from a neighbouring slice. (B, C, *S) -> slices."""
    spatial = image.shape[2:]
    box = []
    for d in range(len(spatial)):
        step = torch.diff(image, dim=2 + d).abs()
        others = [a for a in range(step.dim()) if a != 2 + d]
        where = torch.nonzero(step.amax(dim=others) > 1e-6).flatten()  # i differs from i + 1
        box.append(
            slice(0, spatial[d]) if where.numel() == 0 else slice(int(where[0]), int(where[-1]) + 2)
        )
    return box


def _index(box: list[slice]) -> tuple[Any, ...]:
    """``tensor[_index(box)]``: the box over the spatial axes, every leading axis whole."""
    return (Ellipsis, *box)


def box_mask(image: torch.Tensor, box: list[slice]) -> torch.Tensor:
    mask = torch.zeros_like(image[:, :1])
    mask[_index(box)] = 1.0
    return mask


def masked_mse(warped: torch.Tensor, fixed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((warped - fixed).pow(2) * mask).sum() / (mask.sum() * warped.shape[1]).clamp_min(1)


def similarity(
    name: str,
    warped: torch.Tensor,
    fixed: torch.Tensor,
    mask: torch.Tensor,
    ncc_window: int = 9,
    fixed_statistics: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    if name == "mse":
        return masked_mse(warped, fixed, mask)
    if name == "ncc":
        return local_ncc(warped, fixed, ncc_window, mask=mask, fixed_statistics=fixed_statistics)
    raise ValueError(f"similarity must be one of {SIMILARITIES}, not {name!r}")


def _window(box: list[slice], shape: torch.Size, margin: int) -> list[slice]:
    return [
        slice(max(0, s.start - margin), min(n, s.stop + margin))
        for s, n in zip(box, shape, strict=True)
    ]


def _upsample(coarse: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if coarse.shape[2:] == shape:
        return coarse
    mode = "bilinear" if coarse.dim() == 4 else "trilinear"
    return F.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=False)


class Problem:
    """L of one pair on its window: built once, evaluated at every Adam step."""

    def __init__(
        self,
        moving: torch.Tensor,
        fixed: torch.Tensor,
        start: torch.Tensor,
        cfg: RefineConfig,
        features: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        shape = fixed.shape[2:]
        box = real_box(fixed) if cfg.masked else [slice(0, n) for n in shape]
        self.window = _window(box, shape, cfg.margin)
        # The window and its rim (where the grid has one), for the regulariser.
        self.rim = _window(self.window, shape, 1)
        self.pad = [
            p
            for w, r in zip(reversed(self.window), reversed(self.rim), strict=True)
            for p in (w.start - r.start, r.stop - w.stop)
        ]
        self.origin = tuple(w.start for w in self.window)
        self.moving, self.cfg, self.start = moving, cfg, start
        self.fixed = fixed[_index(self.window)]
        self.mask = box_mask(fixed, box)[_index(self.window)]
        # The fixed image's local statistics for the NCC, the same at every step.
        self.fixed_statistics = (
            box_statistics(self.fixed, cfg.ncc_window) if cfg.similarity == "ncc" else None
        )
        self.start_window = start[_index(self.window)]
        self.start_rim = start[_index(self.rim)]
        # What L_vol of the correction alone measures from (computed once, where it is used).
        self.start_log_jacobian = (
            log_jacobian(self.start_rim)
            if cfg.volume_weight and cfg.volume_of == "correction"
            else None
        )
        self.features = None
        if features is not None and cfg.feature_weight > 0:
            self.features = (features[0], features[1][_index(self.window)])

    def correction_shape(self) -> list[int]:
        return [max(1, -(-(w.stop - w.start) // self.cfg.stride)) for w in self.window]

    def loss(self, correction: torch.Tensor) -> torch.Tensor:
        fine = _upsample(correction, self.fixed.shape[2:])
        warped = warp_window(self.moving, self.start_window + fine, self.origin)
        sim = similarity(
            self.cfg.similarity,
            warped,
            self.fixed,
            self.mask,
            self.cfg.ncc_window,
            self.fixed_statistics,
        )
        if self.features is not None:
            moving_features, fixed_features = self.features
            warped_features = warp_window(moving_features, self.start_window + fine, self.origin)
            sim = sim + self.cfg.feature_weight * masked_mse(
                warped_features, fixed_features, self.mask
            )
        change = F.pad(fine, self.pad)
        base = self.start_rim if self.cfg.regularise == "field" else 0.0
        loss = sim + self.cfg.lam * diffusion(base + change)
        if not self.cfg.volume_weight:
            return loss
        log_j = log_jacobian(self.start_rim + change)  # the whole field's volume change …
        if self.start_log_jacobian is not None:  # … or what the correction adds to the start's
            log_j = log_j - self.start_log_jacobian
        volume = pseudo_huber(log_j, self.cfg.volume_scale).mean()
        return loss + self.cfg.volume_weight * volume

    def field(self, correction: torch.Tensor) -> torch.Tensor:
        out = self.start.clone()
        out[_index(self.window)] += _upsample(correction, self.fixed.shape[2:])
        return out


@torch.no_grad()
def anatomy(
    model: torch.nn.Module, moving: torch.Tensor, fixed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``refine``'s ``features``: the model's class probabilities of both images (a model with
    a segmentation head answers ``probabilities``), or None."""
    probabilities = getattr(model, "probabilities", None)
    if probabilities is None:
        return None
    moving_p, fixed_p = probabilities(moving), probabilities(fixed)
    return None if moving_p is None or fixed_p is None else (moving_p, fixed_p)


def refine(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    phi: torch.Tensor | None = None,
    cfg: RefineConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """phi after ``cfg.total_steps`` Adam steps on L (phi None: start from the identity);
    ``progress(k, total_steps)`` after each; ``features``: (moving, fixed) maps (B, C, *S)
    whose MSE joins the similarity with ``cfg.feature_weight``."""
    cfg = cfg or RefineConfig()
    shape = fixed.shape[2:]
    start = fixed.new_zeros(fixed.shape[0], len(shape), *shape) if phi is None else phi.detach()
    if cfg.shrink == 1:
        return _optimise(moving, fixed, start, cfg, progress, features)
    total = cfg.total_steps

    def counted(offset: int) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, _: progress(offset + done, total)

    coarse = tuple(max(1, -(-n // cfg.shrink)) for n in shape)
    start_coarse = resize_displacement(start, coarse)
    coarse_features = None
    if features is not None:
        coarse_features = (resize(features[0], coarse), resize(features[1], coarse))
    found = _optimise(
        resize(moving, coarse),
        resize(fixed, coarse),
        start_coarse,
        cfg,
        counted(0),
        coarse_features,
    )
    found = start + resize_displacement(found - start_coarse, tuple(shape))
    if not cfg.fine_steps or not cfg.steps:
        return found
    fine = dataclasses.replace(cfg, steps=cfg.fine_steps, shrink=1, fine_steps=0)
    return _optimise(moving, fixed, found, fine, counted(cfg.steps), features)


def _optimise(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    start: torch.Tensor,
    cfg: RefineConfig,
    progress: Callable[[int, int], None] | None,
    features: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """``refine`` on the grid of ``fixed``: the Adam steps from ``start``."""
    shape = fixed.shape[2:]
    problem = Problem(moving, fixed, start, cfg, features)
    correction = start.new_zeros(
        start.shape[0], len(shape), *problem.correction_shape(), requires_grad=True
    )
    optimiser = torch.optim.Adam([correction], lr=cfg.lr)
    with torch.enable_grad():
        for k in range(cfg.steps):
            optimiser.zero_grad(set_to_none=True)
            problem.loss(correction).backward()
            optimiser.step()
            if progress is not None:
                progress(k + 1, cfg.steps)
    with torch.no_grad():
        return problem.field(correction)
