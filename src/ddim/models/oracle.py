"""Exact noise predictors: the Bayes-optimal ``eps*`` for data whose noised marginals are known.

For the forward process ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` (DDIM eq. 4, ``a_t =
alpha_bar(t)``) the minimiser of the training loss ``E |eps_theta(x_t, t) - eps|^2`` is the
posterior mean ``E[eps | x_t]``, which Tweedie's formula writes through the score of the
noised marginal ``p_t``::

    eps*(x_t, t) = -sqrt(1 - a_t) * grad_x log p_t(x_t)                              (1)

For a mixture of isotropic Gaussians ``p_0 = sum_k w_k N(mu_k, s_k^2 I)`` the marginal is
again a mixture, ``p_t = sum_k w_k N(sqrt(a_t) mu_k, v_k I)`` with ``v_k = a_t s_k^2 + 1 -
a_t``, and with the responsibilities ``r_k(x) = w_k N_k(x) / p_t(x)``::

    grad_x log p_t(x) = -sum_k r_k(x) (x - sqrt(a_t) mu_k) / v_k                      (2)

A finite data set is the limit ``s_k -> 0``: ``N`` equally weighted deltas, ``v_k = 1 - a_t``.
Both oracles below evaluate (1)-(2) in float64 with a streaming log-sum-exp over the
components, so far-away points and the one-hot responsibilities of small ``t`` stay finite,
and memory is bounded by a chunk of components at a time. They are plain callables that meet
the sampler's model contract ``model(x_t, t) -> eps``.
"""

from __future__ import annotations

import math

import torch

from ddim.schedule import NoiseSchedule

_CHUNK_ELEMENTS = 2**22  # float64 elements per (batch x chunk) or (chunk x D) block: 32 MiB
_WEIGHT_TOL = 1e-6


def _chunk_rows(batch: int, dim: int) -> int:
    """Components per pass so that no temporary exceeds ``_CHUNK_ELEMENTS``."""
    return max(1, _CHUNK_ELEMENTS // max(batch, dim, 1))


def _mixture_terms(
    x: torch.Tensor,
    a: torch.Tensor,
    centers: torch.Tensor,
    centers_sq: torch.Tensor,
    log_w: torch.Tensor,
    var0: torch.Tensor,
    with_score: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-density and score terms of ``sum_k w_k N(sqrt(a) c_k, (a var0_k + 1 - a) I)``.

    ``x`` is ``(B, D)`` float64 and ``a`` is ``(B,)``, one ``alpha_bar`` per row. Returns
    ``log p(x)`` of shape ``(B,)`` and, with ``with_score``, ``P = sum_k r_k / v_k`` ``(B,)``
    and ``M = sum_k (r_k / v_k) c_k`` ``(B, D)``, so that eq. (2) reads
    ``grad log p = -(P x - sqrt(a) M)``. The sum over components streams in chunks with a
    running maximum (detached: it cancels exactly from the value and from its gradient).
    """
    batch, dim = x.shape
    sqrt_a, one_minus_a = a.sqrt()[:, None], (1.0 - a)[:, None]
    x_sq = (x * x).sum(dim=1, keepdim=True)
    run_max = x.new_full((batch, 1), -math.inf)
    total = x.new_zeros(batch, 1)
    prec = x.new_zeros(batch, 1) if with_score else None
    mean = x.new_zeros(batch, dim) if with_score else None
    step = _chunk_rows(batch, dim)
    for lo in range(0, centers.shape[0], step):
        c = centers[lo : lo + step].to(device=x.device, dtype=torch.float64)
        var = a[:, None] * var0[lo : lo + step] + one_minus_a
        # |x - sqrt(a) c|^2 from expanded norms: one matmul, no (B, K, D) temporary.
        sq = x_sq - 2.0 * sqrt_a * (x @ c.T) + a[:, None] * centers_sq[lo : lo + step]
        sq = sq.clamp_min(0.0)
        logits = (
            log_w[lo : lo + step] - 0.5 * dim * torch.log(2.0 * math.pi * var) - sq / (2.0 * var)
        )
        new_max = torch.maximum(run_max, logits.max(dim=1, keepdim=True).values).detach()
        rescale = torch.exp(run_max - new_max)
        unnorm = torch.exp(logits - new_max)
        total = total * rescale + unnorm.sum(dim=1, keepdim=True)
        if with_score:
            scaled = unnorm / var
            prec = prec * rescale + scaled.sum(dim=1, keepdim=True)
            mean = mean * rescale + scaled @ c
        run_max = new_max
    log_p = (run_max + total.log()).squeeze(1)
    if not with_score:
        return log_p, None, None
    return log_p, (prec / total).squeeze(1), mean / total


class _Oracle:
    """Shared plumbing: input checks, the timestep lookup, and eqs. (1)-(2)."""

    centers: torch.Tensor  # (K, D), any floating dtype; upcast chunk by chunk
    centers_sq: torch.Tensor  # (K,) float64
    log_w: torch.Tensor  # (K,) float64
    var0: torch.Tensor  # (K,) float64, the clean variance of each component
    shape: tuple[int, ...]
    sched: NoiseSchedule
    _min_t: int

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != self.shape:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.shape))}), got {got}")
        return x.reshape(x.shape[0], -1).to(torch.float64)

    def _alpha_bar(self, t: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        """``alpha_bar(t)`` per row as float64 ``(B,)`` on ``device``; ``t = -1`` gives 1."""
        t = torch.as_tensor(t, device=device)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"t must hold integer timesteps, got dtype {t.dtype}")
        if t.ndim == 0:
            t = t.expand(batch)
        if tuple(t.shape) != (batch,):
            raise ValueError(f"t must be an int or have shape ({batch},), got {tuple(t.shape)}")
        T = self.sched.num_timesteps
        if ((t < self._min_t) | (t >= T)).any():
            raise ValueError(f"timesteps must lie in {self._min_t}..{T - 1}")
        table = torch.cat([torch.ones(1, dtype=torch.float64), self.sched.alpha_bar]).to(device)
        return table[t.long() + 1]

    def _evaluate(
        self, x: torch.Tensor, t: int | torch.Tensor, with_score: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(x flattened, a, log p, P, M)``, see :func:`_mixture_terms`."""
        flat = self._flatten(x)
        dev = flat.device
        a = self._alpha_bar(t, flat.shape[0], dev)
        log_p, prec, mean = _mixture_terms(
            flat, a, self.centers, self.centers_sq.to(dev), self.log_w.to(dev),
            self.var0.to(dev), with_score,
        )  # fmt: skip
        return flat, a, log_p, prec, mean

    def __call__(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """``eps*(x_t, t)`` of eqs. (1)-(2), in ``x_t``'s dtype and on its device.

        ``t`` is an int or a LongTensor ``(B,)`` of 0-based timesteps, one per row.
        """
        flat, a, _, prec, mean = self._evaluate(x_t, t, with_score=True)
        # eq. (1) with eq. (2): eps* = sqrt(1 - a) * (P x - sqrt(a) M)
        eps = (1.0 - a).sqrt()[:, None] * (prec[:, None] * flat - a.sqrt()[:, None] * mean)
        return eps.reshape(x_t.shape).to(x_t.dtype)

    def log_prob(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """``log p_t(x)``, the noised marginal's log density per row, float64 ``(B,)``.

        Differentiable in ``x``. ``t`` is an int or a LongTensor ``(B,)``.
        """
        return self._evaluate(x, t, with_score=False)[2]


class GaussianMixture(_Oracle):
    """Data ``~ sum_k w_k N(mu_k, s_k^2 I)``, with the exact ``eps*`` of eqs. (1)-(2).

    Args:
        means: ``(K, *shape)``, the component means ``mu_k``; ``shape`` is ``(D,)`` or
            ``(C, H, W)``.
        stds: ``(K,)`` or a scalar: the isotropic standard deviation ``s_k > 0`` of each
            component.
        weights: ``(K,)``, positive and summing to 1 within ``1e-6``; they are then
            renormalised so the sum is exact. Unnormalised weights are refused rather
            than silently rescaled, since they usually signal a mistake.
        sched: the schedule that defines ``a_t = alpha_bar(t)``.

    ``log_prob`` accepts ``t = -1``, the clean data density. Parameters are stored in
    float64 on the device of ``means``.
    """

    def __init__(
        self,
        means: torch.Tensor,
        stds: torch.Tensor | float,
        weights: torch.Tensor,
        sched: NoiseSchedule,
    ) -> None:
        means = torch.as_tensor(means).detach().to(torch.float64, copy=True)
        if means.ndim < 2 or means.shape[0] < 1:
            raise ValueError(
                f"means must have shape (K, *shape) with K >= 1, got {tuple(means.shape)}"
            )
        k, dev = means.shape[0], means.device
        stds = torch.as_tensor(stds, dtype=torch.float64, device=dev).detach()
        if stds.ndim == 0:
            stds = stds.expand(k)
        weights = torch.as_tensor(weights, dtype=torch.float64, device=dev).detach()
        if tuple(stds.shape) != (k,):
            raise ValueError(f"stds must be a scalar or have shape ({k},), got {tuple(stds.shape)}")
        if tuple(weights.shape) != (k,):
            raise ValueError(f"weights must have shape ({k},), got {tuple(weights.shape)}")
        if not torch.isfinite(means).all():
            raise ValueError("means must be finite")
        if not (torch.isfinite(stds).all() and (stds > 0).all()):
            raise ValueError("stds must be finite and > 0")
        if not (torch.isfinite(weights).all() and (weights > 0).all()):
            raise ValueError("weights must be finite and > 0")
        if abs(weights.sum().item() - 1.0) > _WEIGHT_TOL:
            raise ValueError(
                f"weights must sum to 1 (within {_WEIGHT_TOL}), got {weights.sum().item()}"
            )
        self.sched = sched
        self.shape = tuple(means.shape[1:])
        self.means = means
        self.stds = stds.clone()
        self.weights = weights / weights.sum()
        self.centers = means.reshape(k, -1)
        self.centers_sq = (self.centers * self.centers).sum(dim=1)
        self.log_w = self.weights.log()
        self.var0 = self.stds**2
        self._min_t = -1

    @property
    def mean(self) -> torch.Tensor:
        """The clean data mean ``sum_k w_k mu_k``, flattened to ``(D,)``."""
        return self.weights @ self.centers

    @property
    def covariance(self) -> torch.Tensor:
        """The clean data covariance ``sum_k w_k (s_k^2 I + mu_k mu_k^T) - m m^T``, ``(D, D)``."""
        m = self.mean
        dim = m.numel()
        second = (self.centers.T * self.weights) @ self.centers
        eye = torch.eye(dim, dtype=torch.float64, device=m.device)
        return second + (self.weights @ self.var0) * eye - torch.outer(m, m)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` clean draws ``(n, *shape)``, float64 on the device of ``means``.

        A component is drawn by weight, then ``mu_k + s_k z``; the draws are made on the
        device of ``generator`` (of ``means`` without one).
        """
        dev = generator.device if generator is not None else self.means.device
        k = torch.multinomial(self.weights.to(dev), n, replacement=True, generator=generator)
        z = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64, device=dev)
        std = self.stds.to(dev)[k].reshape(n, *([1] * len(self.shape)))
        return (self.means.to(dev)[k] + std * z).to(self.means.device)


class EmpiricalData(_Oracle):
    """The empirical distribution of ``data`` ``(N, *shape)``: ``N`` equally weighted deltas.

    The exact ``eps*`` of eqs. (1)-(2) with ``s_k = 0``: the posterior over data points is
    a softmax of ``-|x_t - sqrt(a_t) x_n|^2 / (2 (1 - a_t))`` and ``eps* = (x_t - sqrt(a_t)
    E[x_0 | x_t]) / sqrt(1 - a_t)``. Valid for ``t >= 0`` (at ``t = -1`` the marginal has no
    density). The data are kept, not copied, in their own floating dtype and on their device
    (put them on the GPU to sample there; do not modify them in place afterwards); each chunk
    is upcast to float64 when used.
    """

    def __init__(self, data: torch.Tensor, sched: NoiseSchedule) -> None:
        data = torch.as_tensor(data).detach()
        if data.ndim < 2 or data.shape[0] < 1:
            raise ValueError(
                f"data must have shape (N, *shape) with N >= 1, got {tuple(data.shape)}"
            )
        if not data.is_floating_point():
            data = data.to(torch.float64)
        if not torch.isfinite(data).all():
            raise ValueError("data must be finite")
        n = data.shape[0]
        self.sched = sched
        self.shape = tuple(data.shape[1:])
        self.data = data
        self.centers = data.reshape(n, -1)
        rows = _chunk_rows(1, self.centers.shape[1])
        self.centers_sq = torch.cat(
            [(c.to(torch.float64) ** 2).sum(dim=1) for c in self.centers.split(rows)]
        )
        self.log_w = torch.full((n,), -math.log(n), dtype=torch.float64, device=data.device)
        self.var0 = torch.zeros(n, dtype=torch.float64, device=data.device)
        self._min_t = 0

    @property
    def mean(self) -> torch.Tensor:
        """The data mean, flattened to float64 ``(D,)``."""
        return self.centers.to(torch.float64).mean(dim=0)

    @property
    def covariance(self) -> torch.Tensor:
        """The population covariance (divisor ``N``) of the data, float64 ``(D, D)``."""
        centred = self.centers.to(torch.float64) - self.mean
        return centred.T @ centred / self.centers.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` data points drawn uniformly with replacement, ``(n, *shape)``, data dtype."""
        dev = generator.device if generator is not None else self.data.device
        idx = torch.randint(self.data.shape[0], (n,), generator=generator, device=dev)
        return self.data[idx.to(self.data.device)]
