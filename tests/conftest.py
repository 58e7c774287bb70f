"""Shared fixtures: small, deterministic ε-models that every sampler test can drive."""

from __future__ import annotations

import pytest
import torch

import ddim


class WigglyEps(torch.nn.Module):
    """A non-trivial ε-model: nonlinear in ``x``, varying with ``t``, mixing channels.

    Its leading term ``sqrt(1 - a_t) x`` is the exact ε of N(0, I) data, so trajectories stay
    of order one; the rest perturbs it in a way that depends on ``x``, ``t`` and the channel.
    """

    def __init__(self, sched: ddim.NoiseSchedule, channels: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.mix = torch.nn.Parameter(torch.randn(channels, channels, generator=g) / channels)
        self.register_buffer("sigma", (1 - sched.alpha_bar).sqrt())
        self.T = sched.num_timesteps

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = (-1, *([1] * (x.ndim - 1)))
        s = (t.to(x.dtype) / self.T).view(shape)
        mixed = torch.einsum("dc,bc...->bd...", self.mix.to(x.dtype), x)
        wiggle = 0.1 * torch.tanh(mixed) * (0.5 + s) + 0.05 * torch.sin(3 * x) * (1 - s)
        return self.sigma[t].to(x.dtype).view(shape) * x + wiggle


@pytest.fixture
def sched() -> ddim.NoiseSchedule:
    return ddim.NoiseSchedule.linear(1000, 1e-4, 0.02)


@pytest.fixture
def eps_model(sched: ddim.NoiseSchedule) -> WigglyEps:
    return WigglyEps(sched)
