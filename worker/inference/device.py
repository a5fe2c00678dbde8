"""Choosing the compute device: CUDA when present, the CPU otherwise."""

from __future__ import annotations

import torch

from conventions.errors import InputError

DEVICES = ("auto", "cpu", "cuda")


def select_device(request: str = "auto") -> torch.device:
    """The device for ``request``; the CPU's subnormal floats are flushed to zero on the way.

    Training and refinement backpropagate through softmaxes and sigmoids whose gradients, once
    the losses are small, fall below float32's normal range; x86 CPUs compute on such numbers
    up to ten times slower (an ACDC segmentation step went from 0.39 s to 2 s as its loss fell).
    They are far below any difference these models resolve, so zero loses nothing."""
    torch.set_flush_denormal(True)
    if request not in DEVICES and not request.startswith("cuda:"):
        raise InputError(f"unknown device '{request}'; choose auto, cpu, cuda or cuda:N")
    if request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if request.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA device is available; use --device cpu")
    return torch.device(request)
