"""Whether a torch device exists on this machine, asked before anything is moved to it.

``torch.device("cuda:7")`` parses on any machine; the failure comes later, as an
``AssertionError`` from deep inside torch. The command line (``--device``) and training
(``training.device``) ask :func:`device_problem` first, so an absent device is one clear
error instead.
"""

from __future__ import annotations

import torch


def device_problem(device: torch.device) -> str | None:
    """Why ``device`` cannot be used here, or ``None`` if it can."""
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA was requested but is not available (no GPU, or a CPU-only torch build)"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"{device} was requested but this machine has {count} CUDA device(s)"
        return None
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            return "MPS was requested but is not available on this machine"
        return None
    return f"device type {device.type!r} is not supported; use cpu, cuda, cuda:N or mps"
