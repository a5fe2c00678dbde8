"""Checkpoints that rebuild their own model: ``{arch, config, state_dict, meta}``.

Only primitives and tensors are stored, so files load with ``torch.load(weights_only=True)``
and a checkpoint from an untrusted source cannot run code.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.architectures import architecture
from riir.errors import ModelNotFoundError

FORMAT = "riir-checkpoint"
FORMAT_VERSION = 1


def build_model(arch: str, config: dict[str, Any]) -> nn.Module:
    """Instantiate architecture ``arch`` from a plain config dict (lists become tuples)."""
    model_cls, config_cls = architecture(arch)
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(config) - names
    if unknown:
        raise ValueError(f"unknown {arch} config fields: {sorted(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return model_cls(config_cls(**values))


def save_checkpoint(path: str | os.PathLike, model: nn.Module, arch: str,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write atomically: a crash mid-save leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "config": dataclasses.asdict(model.config),  # type: ignore[call-overload]
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta or {},
    }
    return save_atomically(payload, path)


def save_atomically(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary name beside ``path``, then rename: a reader (or a crash)
    never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"checkpoint '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean "unusable"
        raise ModelNotFoundError(f"'{path.name}' is not a readable RIIR checkpoint "
                                 f"({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelNotFoundError(f"'{path.name}' is not a RIIR checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelNotFoundError(f"'{path.name}' was written by a newer RIIR (format "
                                 f"{payload['format_version']}); upgrade to load it")
    return payload


def load_state_grown(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state`` into ``model``, embedding a convolution's smaller odd kernel at the
    centre of a larger one (zeros around it) and returning the names of those it grew.

    With ``padding = kernel // 2`` the grown convolution computes exactly what the small one
    did, so a model with larger kernels starts from the trained model's function and training
    only adds the context around each voxel (e.g. a ConvGRU 1×1×1 → 3×3×3)."""
    own = model.state_dict()
    if set(own) != set(state):
        differ = sorted(set(own) ^ set(state))
        raise ValueError(f"the weights do not belong to this architecture: {differ[:4]}")
    grown, loaded = [], {}
    for name, value in state.items():
        target = own[name]
        if value.shape == target.shape:
            loaded[name] = value
            continue
        small, large = value.shape[2:], target.shape[2:]
        if (value.dim() != target.dim() or value.dim() < 3 or value.shape[:2] != target.shape[:2]
                or any(s > n or (n - s) % 2 for s, n in zip(small, large, strict=True))):
            raise ValueError(f"'{name}' has shape {tuple(value.shape)}, which does not fit "
                             f"{tuple(target.shape)}")
        window = (slice(None), slice(None)) + tuple(
            slice((n - s) // 2, (n - s) // 2 + s) for s, n in zip(small, large, strict=True))
        loaded[name] = torch.zeros_like(target)
        loaded[name][window] = value
        grown.append(name)
    model.load_state_dict(loaded)
    return grown


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu"
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """The model in eval mode on ``device`` and the checkpoint's ``meta`` dict."""
    payload = read_checkpoint(path)
    model = build_model(payload["arch"], payload["config"])
    model.load_state_dict(payload["state_dict"])
    meta = dict(payload["meta"])
    meta.setdefault("arch", payload["arch"])
    return model.to(device).eval(), meta
