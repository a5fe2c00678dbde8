"""The shipped models: names, model cards and the default choice for an input.

Torch-free, so the gateway can list models. Each shipped model is three files in the weights
folder: ``NAME.pt`` (checkpoint), ``NAME.json`` (the card's machine-readable summary) and
``NAME.md`` (the model card: data, command, measured metrics).
"""

from __future__ import annotations

import json
import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from conventions.errors import ModelNotFoundError

# Default model by input: 2-D -> cardiac; small 3-D crops -> hippocampus; else whole brain.
# A 2-D series (qMRI) changes contrast from frame to frame, which a model trained on one
# contrast mistakes for motion: it gets the model trained for that.
DEFAULT_2D = "cardiac-2d"
DEFAULT_2D_SERIES = "qmri-2d"
DEFAULT_SMALL_3D = "hippocampus-3d"
DEFAULT_LARGE_3D = "brain-3d"
SMALL_3D_MAX_VOXELS = 96**3


def weights_dir() -> Path:
    """``$RIIR_MODELS_DIR`` or the ``weights`` folder of the installed ``model`` package.

    ``find_spec`` locates the package without importing it (and torch with it).
    """
    env = os.environ.get("RIIR_MODELS_DIR")
    if env:
        return Path(env)
    spec = find_spec("model")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("the 'model' package is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "weights"


def list_models() -> list[dict[str, Any]]:
    """Cards of the shipped models whose checkpoint is present, sorted by name."""
    folder = weights_dir()
    cards = []
    for card_path in sorted(folder.glob("*.json")):
        card = json.loads(card_path.read_text())
        if (folder / f"{card_path.stem}.pt").is_file():
            card.setdefault("name", card_path.stem)
            cards.append(card)
    return cards


def default_name(spatial_dims: int, voxels: int, series: bool = False) -> str:
    if spatial_dims == 2:
        return DEFAULT_2D_SERIES if series else DEFAULT_2D
    return DEFAULT_SMALL_3D if voxels <= SMALL_3D_MAX_VOXELS else DEFAULT_LARGE_3D


def names() -> set[str]:
    """The shipped models' names."""
    return {card["name"] for card in list_models()}


def resolve(spec: str | None, spatial_dims: int, voxels: int, series: bool = False) -> Path:
    """A checkpoint path from a model name, a path, or (None) the default for the input
    (``series``: frames of a series registered to its template)."""
    shipped = {card["name"]: card for card in list_models()}
    if spec is None:
        spec = default_name(spatial_dims, voxels, series)
        if spec not in shipped:  # the preferred one is missing: any model of that dimension
            same_dims = [n for n, c in shipped.items() if c.get("spatial_dims") == spatial_dims]
            if not same_dims:
                raise ModelNotFoundError(
                    f"no shipped model for {spatial_dims}-D images in {weights_dir()}; "
                    "pass a checkpoint with --model PATH"
                )
            spec = same_dims[0]
    if spec in shipped:
        return weights_dir() / f"{spec}.pt"
    path = Path(spec).expanduser()
    if path.suffix == ".pt" or os.sep in spec:
        if not path.is_file():
            raise ModelNotFoundError(f"checkpoint '{spec}' does not exist")
        return path
    available = ", ".join(shipped) or "none shipped"
    raise ModelNotFoundError(f"unknown model '{spec}' (available: {available})")
