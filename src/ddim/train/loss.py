"""The training objective: Ho et al.'s simple loss on the forward process ``q(x_t | x_0)``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:
    """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise``; ``alpha_bar`` is the
    schedule's float64 table on ``x0``'s device (the coefficients are computed in float64)."""
    a = alpha_bar[t].view(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt().to(x0.dtype) * x0 + (1 - a).sqrt().to(x0.dtype) * noise


def diffusion_loss(
    model: nn.Module, x0: Tensor, t: Tensor, noise: Tensor, alpha_bar: Tensor
) -> Tensor:
    """Ho et al.'s simple loss (eq. 14): the mean squared error of the predicted noise."""
    return F.mse_loss(model(q_sample(x0, t, noise, alpha_bar), t).float(), noise)
