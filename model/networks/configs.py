"""The architectures' hyper-parameters: one dataclass each, saved with the weights.

Torch-free, so the training command builds its flags from these fields (``setting``'s help
text) without importing torch: a new setting is one line here. The networks read their config
from here (``model.networks.riir`` etc.), and a checkpoint stores ``dataclasses.asdict`` of it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from conventions.options import SIMILARITIES

INPUTS = ("gradient", "explicit", "implicit", "gradient+explicit")
UPSAMPLING = ("linear", "convex")


def setting(default: Any, help: str, **flag: Any) -> Any:
    """A config field with the help text (and argparse extras: ``choices``, ``metavar``,
    ``flags``) its command-line flag is generated from. A list or dict default is copied
    for each instance."""
    metadata = {"help": help, **flag}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: copy.copy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def default_of(f: dataclasses.Field[Any]) -> Any:
    """A field's default value, whether given as a value or a factory."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


@dataclass
class RIIRConfig:
    spatial_dims: int = setting(3, "2 or 3 (set from the data)", flags=())
    steps: int = setting(6, "RIIR's recurrent steps T", flags=("--steps", "-T"), metavar="T")
    hidden_channels: tuple[int, int] = setting(
        (16, 16), "RIIR's hidden channels", metavar=("C1", "C2")
    )
    hidden_states: tuple[bool, bool] = setting(
        (True, True),
        "RIIR's hidden states on (1) or off (0): the ablation [1,1], [1,0], [0,1], [0,0]",
        metavar=("H1", "H2"),
    )
    inputs: str = setting(
        "gradient",
        "RIIR's input composition: gradient [phi, ∇L] (the paper's RIIR), "
        "explicit [phi, I_mov∘phi, I_fix], implicit [phi, I_mov, I_fix], or gradient+explicit "
        "(ours: a label-supervised cell sees the anatomy as well as the similarity's pull; a "
        "gradient model grows into it with --init)",
        choices=INPUTS,
    )
    inner_loss: str = setting(
        "mse",
        "similarity L_inner whose gradient drives RIIR / GraDIRN / descent",
        choices=SIMILARITIES,
    )
    ncc_window: int = setting(9, "window of the local NCC")
    gru_kernel: int = setting(3, "RIIR ConvGRU kernel size")
    cell_stride: int = setting(
        1,
        "RIIR runs its cell on a grid coarser by this factor (1: full resolution, the "
        "paper's); the inner gradient is average-pooled onto it and the update upsampled back",
    )
    upsampling: str = setting(
        "linear",
        "how a coarse cell's field returns to the image grid: linear interpolation, "
        "or convex: RAFT's learned convex combination of the coarse neighbours, which starts "
        "as linear, so a linear model grows into it with --init",
        choices=UPSAMPLING,
    )
    second_order: bool = setting(
        False, "meta-gradient through ∇L_inner (second derivatives); off: the gradient is an input"
    )
    gradient_scale: float = setting(
        1.0,
        "∇L_inner is multiplied by this before it enters the cell: the MSE gradient of "
        "[0, 1] images has an RMS of ~0.03 per voxel, which the cell's biases drown at the "
        "default initialisation; a scale that brings it to ~1 lets the cell use it from the "
        "start (docs/method.md)",
    )


@dataclass
class DescentConfig:
    spatial_dims: int = setting(3, "2 or 3 (set from the data)", flags=())
    iterations: int = setting(200, "classical descent: gradient steps (its T)", flags=())
    inner_loss: str = setting("mse", "similarity L_inner", choices=SIMILARITIES)
    step: float = setting(0.5, "classical descent: largest step in voxels")
    sigma: float = setting(2.0, "classical descent: Gaussian smoothing of the field (voxels)")
    ncc_window: int = setting(9, "window of the local NCC")

    @property
    def steps(self) -> int:
        """Updates of the field (every architecture answers ``config.steps``)."""
        return self.iterations


@dataclass
class VoxelMorphConfig:
    spatial_dims: int = setting(3, "2 or 3 (set from the data)", flags=())
    # VoxelMorph's vm2: four poolings (the input must be a multiple of 16), then the decoder's
    # first len(encoder) convolutions (one per level) and the remaining full-resolution ones.
    encoder: tuple[int, ...] = setting((16, 32, 32, 32), "VoxelMorph encoder channels")
    decoder: tuple[int, ...] = setting((32, 32, 32, 32, 32, 16, 16), "VoxelMorph decoder channels")

    @property
    def steps(self) -> int:
        """One prediction (every architecture answers ``config.steps``)."""
        return 1


@dataclass
class GraDIRNConfig:
    spatial_dims: int = setting(3, "2 or 3 (set from the data)", flags=())
    resolutions: int = setting(2, "GraDIRN resolutions")
    iterations: int = setting(3, "GraDIRN iterations per resolution", flags=())
    hidden_channels: int = setting(16, "GraDIRN regulariser channels", flags=())
    inner_loss: str = setting("mse", "similarity L_inner", choices=SIMILARITIES)
    ncc_window: int = setting(9, "window of the local NCC")
    initial_step: float = setting(1.0, "GraDIRN tau at initialisation, voxels per unit of gradient")

    @property
    def steps(self) -> int:
        """Iterates produced: ``resolutions × iterations`` (the outer loss weighs them all)."""
        return self.resolutions * self.iterations


@dataclass
class C2FConfig:
    """Coarse-to-fine RIIR on learned features (``model.networks.c2f``)."""

    spatial_dims: int = setting(3, "2 or 3 (set from the data)", flags=())
    levels: tuple[int, ...] = setting(
        (4, 2), "c2f: strides of the pyramid's grids, coarse to fine", metavar="S"
    )
    level_steps: tuple[int, ...] = setting(
        (3, 3), "c2f: cell steps at each level (T is their sum)", metavar="N"
    )
    hidden_channels: tuple[int, int] = setting((16, 16), "hidden channels", flags=())
    hidden_states: tuple[bool, bool] = setting((True, True), "hidden states", flags=())
    gru_kernel: int = setting(3, "ConvGRU kernel size", flags=())
    encoder_channels: int = setting(8, "c2f: channels of the shared feature encoder E")
    encoder_stride: int = setting(2, "c2f: E's features at 1/stride of the grid")
    encoder_depth: int = setting(
        0, "c2f: 0 for the plain two-convolution E, N for a U-Net with N poolings below it"
    )
    segmentation_classes: int = setting(
        0,
        "c2f: classes (background + labels) of a segmentation head on E, trained by "
        "--segmentation-weight; its probabilities join the features (0: no head)",
    )
    explicit_features: bool = setting(
        False, "c2f: also give the cell the warped and fixed features themselves"
    )
    anatomy_gradient: bool = setting(
        False,
        "c2f: give the cell the gradient of the head's class probabilities' MSE as an input of "
        "its own (with its own learned scale), besides the gradient over all the features",
    )
    correlation_radius: int = setting(
        0,
        "c2f: give the cell, at every voxel, the cosine similarity of the fixed features with "
        "the warped moving features at each offset up to this radius (voxels of the level's "
        "grid; RAFT's cost volume, local): where matching structure lies, beyond what the "
        "similarity's gradient says (0: none)",
    )
    share_cell: bool = setting(True, "c2f: one cell for every level (else one per level)")
    # Both gradients enter the cell ×scale (learned, as a log, from this start); see
    # RIIRConfig.gradient_scale for why ~30 suits the MSE of [0, 1] images.
    gradient_scale: float = setting(30.0, "gradient scale at the start", flags=())

    @property
    def steps(self) -> int:  # T, as the engine reads it
        return sum(self.level_steps)
