"""Choosing the compute device: CUDA when present, the CPU otherwise."""

from __future__ import annotations

import torch

from conventions.errors import InputError

DEVICES = ("auto", "cpu", "cuda")


def select_device(request: str = "auto") -> torch.device:
    if request not in DEVICES and not request.startswith("cuda:"):
        raise InputError(f"unknown device '{request}'; choose auto, cpu, cuda or cuda:N")
    if request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if request.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA device is available; use --device cpu")
    return torch.device(request)
