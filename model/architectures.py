"""The registry of trainable architectures: name -> (model class, config dataclass).

Every architecture takes ``(moving, fixed)`` tensors (B, 1, *S) and returns a list of
displacements (B, D, *S) in voxels (one per iterate; the last is the answer), so training,
evaluation and inference treat RIIR and the baselines alike.
"""

from __future__ import annotations

from importlib import import_module

_ARCHITECTURES = {
    "riir": ("model.riir", "RIIR", "RIIRConfig"),
    "descent": ("model.descent", "Descent", "DescentConfig"),
    "voxelmorph": ("model.voxelmorph", "VoxelMorph", "VoxelMorphConfig"),
    "gradirn": ("model.gradirn", "GraDIRN", "GraDIRNConfig"),
}


def names() -> tuple[str, ...]:
    return tuple(_ARCHITECTURES)


def architecture(name: str) -> tuple[type, type]:
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(names())}")
    module, model_cls, config_cls = _ARCHITECTURES[name]
    mod = import_module(module)
    return getattr(mod, model_cls), getattr(mod, config_cls)
