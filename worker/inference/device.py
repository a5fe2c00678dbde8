"""Choosing the compute device: CUDA when present, the CPU otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from conventions.errors import InputError

DEVICES = ("auto", "cpu", "cuda")


def select_device(request: str = "auto") -> torch.device:
    """The device for ``request``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if request not in DEVICES and not request.startswith("cuda:"):
        raise InputError(f"unknown device '{request}'; choose auto, cpu, cuda or cuda:N")
    if request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if request.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA was requested but no CUDA device is available; use --device cpu")
    return torch.device(request)


@contextlib.contextmanager
def subnormals_flushed() -> Iterator[None]:
    """Within the block, the CPU computes subnormal floats as zero; as before, after it.

    Training backpropagates through softmaxes and sigmoids whose gradients, once the losses
    are small, fall below float32's normal range; x86 CPUs compute on such numbers up to ten
    times slower (an ACDC segmentation step went from 0.39 s to 2 s as its loss fell). They are
    far below any difference these models resolve, so zero loses nothing. The setting is the
    thread's processor state, not torch's, so it is undone on the way out: a library that
    changed it for good would change every float the host program computes afterwards."""
    tiny = torch.finfo(torch.float32).tiny
    was_flushing = (torch.tensor([tiny]) / 4).item() == 0.0  # torch has no getter for it
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported and not was_flushing:
            torch.set_flush_denormal(False)
