"""The denoising loss of a model on images it never trained on: Ho et al.'s L_simple (their
eq. 14), the mean over pixels and images of ``(eps - eps_theta(x_t, t))^2`` with
``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``, at a few fixed ``t``.

The noise is drawn once from ``seed`` (a ``(len(timesteps), *x0.shape)`` tensor on the CPU),
so every model and checkpoint is scored on the same draws and two runs give equal numbers
whatever the batch size or device. Long before FD can tell two young models apart this orders
them, and its per-``t`` terms say where a model is weak: DDIM's deterministic samples hang
on the large-``t`` predictions, which L_simple's mean hardly sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ddim.names import HELDOUT_TIMESTEPS
from ddim.schedule import NoiseSchedule, q_sample


@dataclass(frozen=True)
class HeldoutLoss:
    """The eps MSE at each of ``timesteps``; ``mean`` is their unweighted mean."""

    timesteps: tuple[int, ...]
    per_t: tuple[float, ...]

    @property
    def mean(self) -> float:
        """The unweighted mean of ``per_t`` over the timesteps."""
        return sum(self.per_t) / len(self.per_t)

    def to_dict(self) -> dict[str, float]:
        """The loss at each ``t`` under ``"t<t>"`` (e.g. ``"t500"``) and :attr:`mean`
        under ``"mean"``."""
        per_t = {f"t{t}": v for t, v in zip(self.timesteps, self.per_t, strict=True)}
        return per_t | {"mean": self.mean}


def heldout_noise(shape: Sequence[int], timesteps: Sequence[int], seed: int) -> torch.Tensor:
    """The fixed noise: row ``k`` is the eps added at ``timesteps[k]``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(len(timesteps), *shape, generator=generator)


@torch.no_grad()
def heldout_loss(
    model: nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    timesteps: Sequence[int] = HELDOUT_TIMESTEPS,
    *,
    seed: int = 0,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
) -> HeldoutLoss:
    """L_simple of ``model`` on the images ``x0`` (in [-1, 1]) at each of ``timesteps``,
    each squared error summed in float64."""
    T = schedule.num_timesteps
    if not timesteps or min(timesteps) < 0 or max(timesteps) >= T:
        raise ValueError(f"timesteps must be one or more of 0..{T - 1}, got {list(timesteps)}")
    noise = heldout_noise(x0.shape, timesteps, seed)
    alpha_bar = schedule.alpha_bar.to(device)
    per_t = []
    for k, t in enumerate(timesteps):
        total = 0.0
        for i in range(0, x0.shape[0], batch_size):
            x, eps = x0[i : i + batch_size].to(device), noise[k, i : i + batch_size].to(device)
            tt = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
            err = model(q_sample(x, tt, eps, alpha_bar), tt).double() - eps.double()
            total += float(err.pow(2).sum())
        per_t.append(total / x0.numel())
    return HeldoutLoss(tuple(int(t) for t in timesteps), tuple(per_t))
