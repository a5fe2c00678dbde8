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

from conventions.errors import ModelNotFoundError
from model.networks.architectures import architecture

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


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, arch: str, meta: dict[str, Any] | None = None
) -> Path:
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
        raise ModelNotFoundError(
            f"'{path.name}' is not a readable RIIR checkpoint ({type(exc).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelNotFoundError(f"'{path.name}' is not a RIIR checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelNotFoundError(
            f"'{path.name}' was written by a newer RIIR (format "
            f"{payload['format_version']}); upgrade to load it"
        )
    return payload


Blocks = tuple[list[int], list[int]]  # a weight's (output, input) channel blocks


def channel_blocks(model: nn.Module) -> dict[str, Blocks]:
    """Each parameter's channel blocks: one block per dimension, except where a module
    concatenates inputs or chunks outputs (``channel_blocks()`` of a ConvGRU's gates: reset and
    update rows, x and h columns). Growing keeps every block's channels apart."""
    blocks: dict[str, Blocks] = {
        name: ([value.shape[0]], [value.shape[1]] if value.dim() > 1 else [])
        for name, value in model.named_parameters()
    }
    for prefix, module in model.named_modules():
        if hasattr(module, "channel_blocks"):
            blocks.update(
                {
                    f"{prefix}.{name}" if prefix else name: declared
                    for name, declared in module.channel_blocks().items()
                }
            )
    return blocks


def _offsets(sizes: list[int]) -> list[int]:
    return [sum(sizes[:i]) for i in range(len(sizes))]


def _fits(old: list[int], new: list[int]) -> bool:
    return len(old) == len(new) and all(o <= n for o, n in zip(old, new, strict=True))


def _grow(value: torch.Tensor, fresh: torch.Tensor, old: Blocks, new: Blocks) -> torch.Tensor:
    """``fresh`` (the larger model's own initialisation) with ``value`` embedded: each old
    channel keeps its place within its block, a smaller odd kernel sits at the centre.

    Old output channels read nothing from new input channels (zeros), so they compute what
    they did; new output channels keep their random weights, so they are alive from the first
    step and learn, and what reads them starts at zero."""
    grown = fresh.clone()
    kernel = tuple(
        slice((n - s) // 2, (n - s) // 2 + s)
        for s, n in zip(value.shape[2:], fresh.shape[2:], strict=True)
    )
    cols = list(zip(_offsets(old[1]), _offsets(new[1]), old[1], strict=True))
    for r_old, r_new, rows in zip(_offsets(old[0]), _offsets(new[0]), old[0], strict=True):
        if value.dim() == 1:
            grown[r_new : r_new + rows] = value[r_old : r_old + rows]
            continue
        grown[r_new : r_new + rows] = 0
        for c_old, c_new, width in cols:
            grown[(slice(r_new, r_new + rows), slice(c_new, c_new + width), *kernel)] = value[
                r_old : r_old + rows, c_old : c_old + width
            ]
    return grown


def load_state_grown(model: nn.Module, source: nn.Module) -> list[str]:
    """Load ``source``'s weights into ``model``, a model of the same architecture with the same
    or more channels and the same or larger odd kernels, and return the names of the weights
    that grew.

    The grown model computes exactly what ``source`` did (with ``padding = kernel // 2`` a
    centred kernel adds nothing, and new channels are not read yet), so training starts from
    the trained model's function and only adds context around each voxel (a ConvGRU 1×1×1 →
    3×3×3) or capacity (more hidden channels). Parameters that the model declares neutral
    (``starts_neutral``, e.g. a convex upsampling that starts as linear interpolation) keep
    their initialisation and are listed too."""
    own, state = model.state_dict(), source.state_dict()
    # Parameters the model declares neutral at initialisation (``starts_neutral``) may be new.
    neutral = tuple(getattr(model, "starts_neutral", ()))
    added = sorted(k for k in set(own) - set(state) if k.startswith(neutral))
    differ = sorted((set(own) ^ set(state)) - set(added))
    if differ:
        raise ValueError(f"the weights do not belong to this architecture: {differ[:4]}")
    new_blocks, old_blocks = channel_blocks(model), channel_blocks(source)
    grown, loaded = list(added), {k: own[k] for k in added}
    for name, value in state.items():
        target = own[name]
        # Same shape is not enough: explicit [phi, I_mov∘phi, I_fix] is as wide as gradient
        # [phi, ∇L] in 2-D, and a gradient weight must not read an image.
        old, new = old_blocks.get(name), new_blocks.get(name)
        if value.shape == target.shape and old == new:
            loaded[name] = value
            continue
        small, large = value.shape[2:], target.shape[2:]
        if (
            old is None
            or new is None
            or value.dim() != target.dim()
            or not (_fits(old[0], new[0]) and _fits(old[1], new[1]))
            or any(s > n or (n - s) % 2 for s, n in zip(small, large, strict=True))
        ):
            raise ValueError(
                f"'{name}' has shape {tuple(value.shape)} (channel blocks "
                f"{old}), which does not fit {tuple(target.shape)} ({new})"
            )
        loaded[name] = _grow(value, target, old, new)
        grown.append(name)
    model.load_state_dict(loaded)
    return grown


def load_checkpoint(
    path: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The model in eval mode on ``device`` and the checkpoint's ``meta`` dict."""
    payload = read_checkpoint(path)
    model = build_model(payload["arch"], payload["config"])
    model.load_state_dict(payload["state_dict"])
    meta = dict(payload["meta"])
    meta.setdefault("arch", payload["arch"])
    return model.to(device).eval(), meta
