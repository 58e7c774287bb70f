"""An exact class-conditional ε-model: classes ``y ~ prior``, ``x_0 | y ~ N(mu_y, s_y^2 I)``.

Everything guidance needs has a closed form here (:mod:`ddim.models.oracle` eqs. 1-2):

- the conditional ``eps*(x_t, t, y)``: the oracle of the single Gaussian of class ``y``;
- the unconditional ``eps*(x_t, t)``: the oracle of the mixture ``sum_y prior_y N_y``, which
  is what the null label ``K`` gives;
- the posterior ``p(y | x_t) ∝ prior_y N(x_t; sqrt(a_t) mu_y, (a_t s_y^2 + 1 - a_t) I)``,
  whose logits :meth:`ClassMixture.classifier` returns (differentiable in ``x_t``): the
  exact noise-aware classifier of classifier guidance.

So classifier-free guidance at ``w = 1`` and classifier guidance with this classifier at
``s = 1`` must both sample each class's Gaussian exactly as the conditional oracle does.
"""

from __future__ import annotations

import torch

from ddim.models.oracle import GaussianMixture
from ddim.schedule import NoiseSchedule


class ClassMixture:
    """``K`` classes, one isotropic Gaussian each; called as ``model(x_t, t, y=None)``.

    Args:
        means: ``(K, *shape)``, the class means ``mu_y``.
        stds: ``(K,)`` or a scalar, the class standard deviations ``s_y``.
        prior: ``(K,)``, the class probabilities (summing to 1).
        sched: the schedule of ``alpha_bar``.
    """

    def __init__(
        self,
        means: torch.Tensor,
        stds: torch.Tensor | float,
        prior: torch.Tensor,
        sched: NoiseSchedule,
    ) -> None:
        self.marginal = GaussianMixture(means, stds, prior, sched)
        k = self.marginal.means.shape[0]
        self.num_classes = k
        self.classes = [
            GaussianMixture(self.marginal.means[i : i + 1], self.marginal.stds[i], [1.0], sched)
            for i in range(k)
        ]
        self.shape = self.marginal.shape
        self.sched = sched

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``eps*`` of class ``y[i]`` for row ``i`` (the mixture's for the null label ``K``
        or ``y=None``), in ``x_t``'s dtype."""
        if y is None:
            return self.marginal(x_t, t)
        if tuple(y.shape) != (x_t.shape[0],):
            raise ValueError(f"y must have shape ({x_t.shape[0]},), got {tuple(y.shape)}")
        t = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        out = torch.empty_like(x_t)
        for label in y.unique().tolist():
            if not 0 <= label <= self.num_classes:
                raise ValueError(f"labels must lie in 0..{self.num_classes}, got {label}")
            rows = y == label
            oracle = self.marginal if label == self.num_classes else self.classes[label]
            out[rows] = oracle(x_t[rows], t[rows])
        return out

    def classifier(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact posterior logits ``log prior_y + log p_t(x_t | y)``, ``(B, K)`` float64."""
        log_prior = self.marginal.weights.log().to(x_t.device)
        return torch.stack(
            [c.log_prob(x_t, t) + log_prior[i] for i, c in enumerate(self.classes)], dim=1
        )

    def sample(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Clean draws of the classes ``y``: ``mu_y + s_y z``, float64 ``(len(y), *shape)``."""
        z = torch.randn((len(y), *self.shape), generator=generator, dtype=torch.float64)
        std = self.marginal.stds[y].reshape(-1, *([1] * len(self.shape)))
        return self.marginal.means[y] + std * z
