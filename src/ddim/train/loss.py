"""The training objective: the eps MSE on the forward process ``q(x_t | x_0)``, weighted
across ``t`` as ``training.loss_weighting`` says.

- ``simple``: Ho et al.'s L_simple (their eq. 14), weight 1 at every ``t``;
- ``min-snr``: min-SNR-gamma (Hang et al. 2023) for eps-prediction,
  ``w(t) = min(SNR_t, gamma) / SNR_t`` with ``SNR_t = alpha_bar_t / (1 - alpha_bar_t)``:
  the low-noise steps, whose eps is easy and whose x0 error it hides, count less.

A class-conditional run may take the null label's target from an unconditional teacher
(``training.null_teacher``): for a sample whose label was dropped, the target is the
teacher's ``eps(x_t, t)``, its estimate of ``E[eps | x_t]`` (the minimiser of the same MSE),
in place of the drawn noise. The null label then learns the teacher's unconditional eps
directly, with far less variance than from single noise draws (distillation; Hinton et al.
2015), while the labelled samples keep the plain objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddim.schedule import q_sample


def loss_weights(t: Tensor, alpha_bar: Tensor, weighting: str, gamma: float) -> Tensor | None:
    """The weight of each sample's eps MSE (float32), or ``None`` for ``simple``; computed
    in float64 from the schedule's ``alpha_bar`` table."""
    if weighting == "simple":
        return None
    if weighting != "min-snr":
        raise ValueError(f"unknown loss weighting {weighting!r}")
    a = alpha_bar[t]
    snr = a / (1 - a)
    return (snr.clamp(max=gamma) / snr).float()


def diffusion_loss(
    model: nn.Module,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    alpha_bar: Tensor,
    weights: Tensor | None = None,
    y: Tensor | None = None,
    teacher: nn.Module | None = None,
    null_label: int | None = None,
) -> Tensor:
    """The mean squared error of the predicted noise, in fp32; with ``weights`` (one per
    sample, :func:`loss_weights`) the batch mean of each sample's weighted MSE. A
    conditional model is called with its labels ``y``; with a ``teacher``, the samples
    labelled ``null_label`` regress on the teacher's eps instead of the noise."""
    x_t = q_sample(x0, t, noise, alpha_bar)
    eps = (model(x_t, t) if y is None else model(x_t, t, y)).float()
    target = noise.float()
    if teacher is not None and y is not None:
        target = null_targets(teacher, x_t, t, target, y == null_label)
    if weights is None:
        return F.mse_loss(eps, target)
    per_sample = (eps - target).pow(2).flatten(1).mean(1)
    return (weights * per_sample).mean()


def null_targets(
    teacher: nn.Module, x_t: Tensor, t: Tensor, noise: Tensor, dropped: Tensor
) -> Tensor:
    """``noise`` (fp32) with the rows where ``dropped`` is true replaced by the teacher's
    eps at ``(x_t, t)``, computed without gradient."""
    if not bool(dropped.any()):
        return noise
    with torch.no_grad():
        eps = teacher(x_t[dropped], t[dropped]).float()
    return noise.index_put((dropped,), eps)
