"""The precision of the model call: fp32, bf16 or fp16 autocast, or ``auto``.

Only the network runs in lower precision; a sampler's own arithmetic stays in the dtype of
``x_T`` and the model's output is cast back to it. What is fast depends on the hardware:
bf16 pays on GPUs that support it and on CPUs with native bf16 instructions (AVX512-BF16,
AMX), while on CPUs without them oneDNN emulates it and a forward pass got several times
*slower*. So ``auto`` decides from the device, never from one machine's measurement:

- CUDA: bf16 where the GPU supports it, else fp16;
- CPU: bf16 with native bf16 instructions, else fp32;
- anything else: fp32.

``fp32`` means no autocast at all: the model runs in the dtype of its input and weights.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

from ddim.names import PRECISIONS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_bf16_flags() -> tuple[str, ...]:
    """The native bf16 instruction sets this CPU reports in ``/proc/cpuinfo`` (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return tuple(f for f in _NATIVE_BF16_FLAGS if f in flags)


def choose(precision: str, device: torch.device | str) -> tuple[str, str]:
    """The precision to run (``fp32``, ``bf16`` or ``fp16``) for ``precision`` on
    ``device``, and why; a ValueError for an unknown name or fp16 off the GPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device, not {device.type}")
    if precision != "auto":
        return precision, "asked for"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name(device)} supports bf16"
        return "fp16", f"{torch.cuda.get_device_name(device)} lacks bf16"
    if device.type == "cpu":
        native = cpu_bf16_flags()
        if native:
            return "bf16", f"the CPU has native bf16 ({', '.join(native)})"
        return "fp32", "the CPU has no native bf16 (avx512_bf16/amx_bf16); emulated bf16 is slower"
    return "fp32", f"no bf16 rule for {device.type} devices"


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Run the enclosed model calls in ``precision`` (resolved with :func:`choose`)."""
    chosen, _ = choose(precision, device)
    device = torch.device(device)
    if chosen == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=DTYPES[chosen]):
        yield
