"""What a network predicts, and the one conversion every sampler reads it through.

A checkpoint declares its network's output (``UNetConfig.prediction``, diffusers'
``prediction_type``). With ``x_t = alpha_t x_0 + sigma_t eps`` and ``alpha^2 + sigma^2 = 1``:

- ``eps``: the noise (Ho et al. 2020); ``x_0 = (x_t - sigma_t eps) / alpha_t`` (DDIM eq. 9);
- ``v``: ``v = alpha_t eps - sigma_t x_0`` (Salimans & Ho 2022, §4); then
  ``x_0 = alpha_t x_t - sigma_t v`` and ``eps = sigma_t x_t + alpha_t v``;
- ``x``: the data ``x_0`` itself; ``eps = (x_t - alpha_t x_0) / sigma_t``.

:func:`as_eps_model` turns any of the three into the ε-model that guidance, the solvers and
:func:`ddim.invert` call, so none of them sees the parameterization. :func:`from_pair` is
the inverse map (a target in the network's own terms), and :class:`Reparameterized`
re-expresses an ε-model as a v- or x-model (the exact oracles, rewrapped, in the tests).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from ddim.checked_model import Model
from ddim.guidance import num_classes
from ddim.names import PREDICTIONS
from ddim.plan import Coefficient, data_prediction, noise_prediction
from ddim.schedule import NoiseSchedule


def check_prediction(prediction: str) -> str:
    """``prediction`` if it is one of :data:`ddim.names.PREDICTIONS`, else a ValueError."""
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}"
        )
    return prediction


def prediction_of(model: object) -> str:
    """What ``model`` predicts: its ``config.prediction`` (every wrapper of a U-Net carries
    the ``config``), else ``"eps"`` (a plain callable is an ε-model)."""
    return check_prediction(getattr(getattr(model, "config", None), "prediction", "eps"))


def to_pair(
    out: torch.Tensor, x: torch.Tensor, alpha: Coefficient, sigma: Coefficient, prediction: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eps, x0)`` implied by the network output ``out`` at ``x = x_t`` (module docstring);
    ``alpha`` and ``sigma`` are floats or tensors that broadcast against ``x``."""
    if prediction == "eps":
        return out, data_prediction(x, out, alpha, sigma)
    if prediction == "v":
        return sigma * x + alpha * out, alpha * x - sigma * out
    if prediction == "x":
        return noise_prediction(x, out, alpha, sigma), out
    raise ValueError(check_prediction(prediction))


def from_pair(
    eps: torch.Tensor, x0: torch.Tensor, alpha: Coefficient, sigma: Coefficient, prediction: str
) -> torch.Tensor:
    """The output a ``prediction`` network should give for the pair ``(eps, x0)``."""
    if prediction == "eps":
        return eps
    if prediction == "v":
        return alpha * eps - sigma * x0
    if prediction == "x":
        return x0
    raise ValueError(check_prediction(prediction))


def coefficients(
    sched: NoiseSchedule, t: torch.Tensor, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``alpha_t = sqrt(alpha_bar_t)`` and ``sigma_t = sqrt(1 - alpha_bar_t)`` per row of the
    LongTensor ``t``, computed in float64 and shaped to broadcast against ``like``."""
    return coefficients_of(sched.alpha_bar.to(t.device), t, like)


def coefficients_of(
    alpha_bar: torch.Tensor, t: torch.Tensor, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`coefficients` from a schedule's ``alpha_bar`` table already on ``t``'s device."""
    a = alpha_bar[t].view(-1, *([1] * (like.ndim - 1)))
    return a.sqrt().to(like.dtype), (1 - a).sqrt().to(like.dtype)


class _EpsView:
    """A v- or x-network read as an ε-model (:func:`as_eps_model`)."""

    def __init__(self, model: Model, sched: NoiseSchedule, prediction: str) -> None:
        self.model, self.sched, self.prediction = model, sched, prediction
        self.config = getattr(model, "config", None)
        self.alpha_bar: dict[torch.device, torch.Tensor] = {}  # the table per device, once

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        out = self.model(x, t, *y)
        if t.device not in self.alpha_bar:
            self.alpha_bar[t.device] = self.sched.alpha_bar.to(t.device)
        alpha, sigma = coefficients_of(self.alpha_bar[t.device], t, out)
        return to_pair(out, x.to(out.dtype), alpha, sigma, self.prediction)[0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["model"], name)


def as_eps_model(model: Model, sched: NoiseSchedule) -> Model:
    """``model`` as ``eps(x_t, t[, y])``: itself for an ε-model, else its output converted
    by :func:`to_pair` at each row's ``t``. Classifier-free guidance's combination is
    affine in the output, so it may be applied before or after this conversion alike."""
    prediction = prediction_of(model)
    return model if prediction == "eps" else _EpsView(model, sched, prediction)


class Reparameterized:
    """An ε-model re-expressed as a ``prediction`` model: its output is
    :func:`from_pair` of the ε it gives and the ``x_0`` that ε implies (eq. 9)."""

    def __init__(self, eps_model: Model, sched: NoiseSchedule, prediction: str) -> None:
        self.eps_model, self.sched = eps_model, sched
        k = num_classes(eps_model)
        self.config = SimpleNamespace(num_classes=k, prediction=check_prediction(prediction))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *y: torch.Tensor) -> torch.Tensor:
        eps = self.eps_model(x, t, *y)
        alpha, sigma = coefficients(self.sched, t, eps)
        x0 = (x - sigma * eps) / alpha
        return from_pair(eps, x0, alpha, sigma, self.config.prediction)
