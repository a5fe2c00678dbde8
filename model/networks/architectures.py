"""The registry of trainable architectures: name -> (model class, config dataclass).

The one owner of the architecture names. Every architecture takes ``(moving, fixed)`` tensors
(B, 1, *S) and returns a list of displacements (B, D, *S) in voxels (one per iterate; the last
is the answer), so training, evaluation and inference treat RIIR and the baselines alike.
Torch-free until a model class is asked for.
"""

from __future__ import annotations

from importlib import import_module

from model.networks import configs

_ARCHITECTURES = {  # name -> (module, model class, config class)
    "riir": ("model.networks.riir", "RIIR", configs.RIIRConfig),
    "descent": ("model.networks.descent", "Descent", configs.DescentConfig),
    "voxelmorph": ("model.networks.voxelmorph", "VoxelMorph", configs.VoxelMorphConfig),
    "gradirn": ("model.networks.gradirn", "GraDIRN", configs.GraDIRNConfig),
    "c2f": ("model.networks.c2f", "C2FRIIR", configs.C2FConfig),  # coarse-to-fine on features
}
# What ``riir train --arch`` offers (descent is not learned: it has nothing to train).
TRAINABLE = ("riir", "voxelmorph", "gradirn", "c2f")


def names() -> tuple[str, ...]:
    return tuple(_ARCHITECTURES)


def config_class(name: str) -> type:
    """The config dataclass of architecture ``name`` (no torch import)."""
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(names())}")
    return _ARCHITECTURES[name][2]


def architecture(name: str) -> tuple[type, type]:
    config_cls = config_class(name)
    module, model_cls, _ = _ARCHITECTURES[name]
    return getattr(import_module(module), model_cls), config_cls
