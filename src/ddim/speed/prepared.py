"""An eps-model prepared for fast inference: channels-last layout, torch.compile, and a
bound on the rows of one forward pass.

Which of these pays is a property of the hardware and of the amount of work, so the choice
is measured (:mod:`ddim.speed.choice`, ``benchmarks/sampling_vs_diffusers.py``):
channels-last feeds oneDNN's and cuDNN's fastest convolutions on some machines and slows
others; ``torch.compile`` fuses the elementwise work between the convolutions but costs
tens of seconds the first time a model and batch shape are compiled on a machine, and a few
seconds in every later process, whose kernels come from the persistent cache under
:func:`compile_cache_dir`.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ddim import cache
from ddim.checked_model import Model

INDUCTOR_CACHE = "TORCHINDUCTOR_CACHE_DIR"


@dataclass(frozen=True)
class Setting:
    """How the model runs: ``channels_last`` layout, ``compile`` (torch.compile with fixed
    shapes), and ``rows``, the most rows one forward pass takes (a larger call, such as
    classifier-free guidance's ``2B`` rows, is split; ``None`` keeps every call whole)."""

    channels_last: bool = False
    compile: bool = False
    rows: int | None = None

    def describe(self) -> str:
        """``"eager"``, ``"compile + channels-last, 64 rows a pass"`` and the like."""
        parts = ["compile" if self.compile else "eager"]
        if self.channels_last:
            parts.append("channels-last")
        text = " + ".join(parts)
        return text if self.rows is None else f"{text}, {self.rows} rows a pass"


def compile_cache_dir() -> Path:
    """Where torch.compile keeps its kernels: ``$TORCHINDUCTOR_CACHE_DIR`` if the user set
    it, else ``inductor/`` under :func:`ddim.cache.cache_dir` (set for this process), which
    outlives the ``/tmp`` folder inductor uses by default (inductor writes that default into
    the variable the first time it looks, so it counts as unset)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    if os.environ.get(INDUCTOR_CACHE, default_cache_dir()) == default_cache_dir():
        os.environ[INDUCTOR_CACHE] = str(cache.cache_dir() / "inductor")
    return Path(os.environ[INDUCTOR_CACHE])


class ChannelsLast(nn.Module):
    """A copy of ``model`` with its weights and every input in channels-last layout; the
    output is handed back contiguous, so the sampler's arithmetic sees the layout it gave.
    A conditional model's labels ``y`` pass through."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        self.config = getattr(model, "config", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        """The model's output for ``x`` handed to it in channels-last layout (a 4-D
        ``x`` only; others pass as they are), made contiguous."""
        if x.ndim != 4:
            return self.model(x, t, *y)
        return self.model(x.contiguous(memory_format=torch.channels_last), t, *y).contiguous()


class Compiled:
    """``torch.compile(model)`` for fixed shapes, with its kernels in the persistent cache;
    ``seconds`` is what its first call (the compilation, or the cache's load) took."""

    def __init__(self, model: nn.Module) -> None:
        compile_cache_dir()
        self.compiled = torch.compile(model, dynamic=False)
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


class Rows:
    """``model`` called on at most ``rows`` rows at a time; a call of more rows is split and
    its outputs concatenated (rows are independent: the U-Net has no batch statistics).
    With ``pad``, a shorter piece is padded with copies of its first row, so a model
    compiled for ``rows`` never sees another shape."""

    def __init__(self, model: Model, rows: int, *, pad: bool = False) -> None:
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.model, self.rows, self.pad = model, rows, pad
        self.config = getattr(model, "config", None)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n == self.rows or (n < self.rows and not self.pad):
            return self.model(x, t, *y)
        outs = []
        for a in range(0, n, self.rows):
            piece = [v[a : a + self.rows] for v in (x, t, *y)]
            short = self.rows - piece[0].shape[0]
            if self.pad and short:
                piece = [torch.cat([v, v[:1].expand(short, *v.shape[1:])]) for v in piece]
            outs.append(self.model(*piece)[: self.rows - short if self.pad else None])
        return torch.cat(outs)

    def __getattr__(self, name: str) -> object:
        return getattr(self.__dict__["model"], name)


def for_inference(
    model: nn.Module,
    *,
    channels_last: bool = False,
    compile: bool = False,
    rows: int | None = None,
) -> Model:
    """``model`` (an eval-mode eps-model) in channels-last layout, compiled, and/or called
    ``rows`` rows at a time (a compiled model always sees exactly ``rows`` rows when given);
    the result keeps the ``config`` of a :class:`~ddim.models.unet.UNet`."""
    prepared: Model = ChannelsLast(model) if channels_last else model
    if compile:
        prepared = Compiled(prepared)
    return prepared if rows is None else Rows(prepared, rows, pad=compile)


def prepare(model: nn.Module, setting: Setting) -> Model:
    """:func:`for_inference` with the fields of ``setting``."""
    return for_inference(
        model, channels_last=setting.channels_last, compile=setting.compile, rows=setting.rows
    )
