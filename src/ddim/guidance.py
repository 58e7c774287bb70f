"""Guided ε: the model call of a class-conditional sampler, the same for every solver.

Conditioning travels with the model call, not through the solvers: :func:`guided` wraps a
model and its labels into one ``eps(x_t, t)`` that every solver of :mod:`ddim.solvers`
calls as it calls an unconditional model.

- A class-conditional model (``num_classes = K``; label ``K`` is "no class") is called as
  ``model(x_t, t, y)``. Classifier-free guidance with weight ``w`` (Ho & Salimans 2022)::

      eps~ = eps(x_t, t, null) + w * (eps(x_t, t, y) - eps(x_t, t, null))              (1)

  with both halves in one batched call of ``2B`` rows. ``w = 1`` is the conditional model
  alone and ``w = 0`` the unconditional one: each takes one call of ``B`` rows. Without
  ``guidance`` a conditional model with labels is sampled conditionally (``w = 1``).
- Classifier guidance (Dhariwal & Nichol 2021, Alg. 2) with a noise-aware classifier
  ``c(x_t, t) -> logits`` and scale ``s``::

      eps^ = eps - s * sqrt(1 - a_t) * grad_x log p(y | x_t)                           (2)

  where ``eps`` is the model's (unconditional, or as above for a conditional model). At
  ``s = 1`` with the exact posterior this is Bayes' rule for the score,
  ``grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ddim.checked_model import Model
from ddim.schedule import NoiseSchedule

Classifier = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def num_classes(model: object) -> int:
    """``K`` of a class-conditional model (its ``num_classes`` or ``config.num_classes``),
    0 for an unconditional one."""
    k = getattr(model, "num_classes", None)
    if k is None:
        k = getattr(getattr(model, "config", None), "num_classes", 0)
    return int(k or 0)


def balanced_labels(k: int, n: int) -> torch.Tensor:
    """``n // k`` labels of each of ``k`` classes (at least one each), class by class: the
    labels of ``--class all``, one grid row per class."""
    return torch.arange(k).repeat_interleave(max(1, n // k))


def check_labels(y: torch.Tensor, batch: int, classes: int | None, what: str) -> torch.Tensor:
    """``y`` as a LongTensor ``(batch,)`` with labels in ``0 .. classes - 1`` (``>= 0`` when
    ``classes`` is unknown), else a ValueError that names the problem; one host read of
    ``y``, before sampling starts."""
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"labels y must be an integer tensor, got {type(y).__name__}")
    if tuple(y.shape) != (batch,):
        raise ValueError(f"labels y must have shape ({batch},) for a batch of {batch}, got "
                         f"{tuple(y.shape)}")  # fmt: skip
    bound = math.inf if classes is None else classes
    bad = sorted({int(v) for v in y.tolist() if not 0 <= v < bound})
    if bad:
        top = "" if classes is None else f"..{classes - 1}"
        raise ValueError(f"class {bad[0]} is out of range: {what} has classes 0{top}")
    return y.long().cpu()


def guided(
    model: Model,
    sched: NoiseSchedule,
    batch: int,
    *,
    y: torch.Tensor | None = None,
    guidance: float | None = None,
    classifier: Classifier | None = None,
    classifier_scale: float | None = None,
) -> Model:
    """``model`` as one ``eps(x_t, t)`` under eq. (1) and/or eq. (2) (module docstring),
    or ``model`` itself when nothing conditions it. ``y`` holds one label per sample."""
    k = num_classes(model)
    if guidance is not None:
        if not math.isfinite(guidance) or guidance < 0:
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
        if not k:
            raise ValueError(
                "classifier-free guidance needs a class-conditional model (num_classes > 0); "
                "this one is unconditional"
            )
        if y is None:
            raise ValueError("classifier-free guidance needs labels y")
    if classifier_scale is not None and classifier is None:
        raise ValueError("classifier_scale needs a classifier")
    if classifier is not None and y is None:
        raise ValueError("classifier guidance needs labels y")
    if y is None:
        return model
    if not k and classifier is None:
        raise ValueError(
            "labels y need a class-conditional model (num_classes > 0) or a classifier; "
            "this model is unconditional"
        )
    what = "the model" if k else "the classifier"
    labels = check_labels(y, batch, k or num_classes(classifier) or None, what)
    cond = _conditional_eps(model, labels, k, guidance) if k else model
    if classifier is None:
        return cond
    scale = 1.0 if classifier_scale is None else classifier_scale
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"classifier_scale must be a finite number >= 0, got {scale}")
    return _classifier_guided(cond, classifier, labels, scale, sched)


def _conditional_eps(model: Model, y: torch.Tensor, k: int, w: float | None) -> Model:
    """Eq. (1) for a conditional ``model`` with ``K = k`` classes and labels ``y``."""
    cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def labels(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in cache:
            y_dev = y.to(device)
            cache[device] = (y_dev, torch.cat([y_dev, torch.full_like(y_dev, k)]))
        return cache[device]

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y_dev, both = labels(x.device)
        if w is None or w == 1:
            return model(x, t, y_dev)
        if w == 0:
            return model(x, t, torch.full_like(y_dev, k))
        e_cond, e_null = model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return e_null + w * (e_cond - e_null)

    return eps


def _classifier_guided(
    model: Model, classifier: Classifier, y: torch.Tensor, scale: float, sched: NoiseSchedule
) -> Model:
    """Eq. (2): ``model``'s eps moved along the classifier's ``grad_x log p(y | x_t)``."""
    sigma = {torch.device("cpu"): (1 - sched.alpha_bar).sqrt()}  # by device, moved once
    top = int(y.max()) if y.numel() else 0

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e = model(x, t)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = classifier(x_in, t)
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                shape = tuple(logits.shape)
                raise ValueError(f"the classifier must return logits (B, K), got {shape}")
            if top >= logits.shape[1]:
                raise ValueError(
                    f"class {top} is out of range: the classifier has classes "
                    f"0..{logits.shape[1] - 1}"
                )
            y_dev = y.to(logits.device)
            log_p = F.log_softmax(logits.to(torch.float64), dim=1).gather(1, y_dev[:, None]).sum()
            (grad,) = torch.autograd.grad(log_p, x_in)
        if x.device not in sigma:
            sigma[x.device] = sigma[torch.device("cpu")].to(x.device)
        s_t = sigma[x.device][t].view(-1, *([1] * (x.ndim - 1)))
        return e - (scale * s_t).to(e.dtype) * grad.to(e.dtype)

    return eps
