"""An eps-model prepared for fast inference: channels-last memory format and torch.compile.

Both are opt-in per call, and the command line picks its defaults from
``benchmarks/sampling_vs_diffusers.py``: channels-last feeds oneDNN's and cuDNN's fastest
convolutions; ``torch.compile`` fuses the elementwise work between them, but costs tens of
seconds per process (and again for each new batch shape), which only a long run repays.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn

Model = Callable[..., torch.Tensor]


class ChannelsLast(nn.Module):
    """A copy of ``model`` with its weights and every input in channels-last layout; the
    output is handed back contiguous, so the sampler's arithmetic sees the layout it gave.
    A conditional model's labels ``y`` pass through."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        self.config = getattr(model, "config", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            return self.model(x, t, *y)
        return self.model(x.contiguous(memory_format=torch.channels_last), t, *y).contiguous()


class Compiled:
    """``torch.compile(model)`` that times its first call (the compilation) in ``seconds``."""

    def __init__(self, model: nn.Module) -> None:
        self.compiled = torch.compile(model)
        self.config = getattr(model, "config", None)
        self.seconds: float | None = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        if self.seconds is not None:
            return self.compiled(x, t, *y)
        start = time.perf_counter()
        out = self.compiled(x, t, *y)
        self.seconds = time.perf_counter() - start
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapped model's tensors (their names carry ``torch.compile``'s prefix)."""
        return self.compiled.state_dict()


def for_inference(model: nn.Module, *, channels_last: bool = False, compile: bool = False) -> Model:
    """``model`` (an eval-mode eps-model) in channels-last layout and/or compiled; the result
    keeps the ``config`` of a :class:`~ddim.models.unet.UNet`."""
    prepared: nn.Module = ChannelsLast(model) if channels_last else model
    return Compiled(prepared) if compile else prepared
