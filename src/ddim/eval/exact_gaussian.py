"""An exact benchmark of the samplers: Gaussian data, exact ``eps*``, exact output law.

For data ``x_0 ~ N(0, diag(lambda))`` the noised marginal is ``N(0, diag(a lambda + 1 - a))``
(``a = alpha_bar(t)``), so the Bayes-optimal noise predictor (Tweedie; ``ddim.models.oracle`` eq. 1)
is linear in ``x`` per coordinate::

    eps*(x, t) = sqrt(1 - a) x / (a lambda + 1 - a)                                    (1)

With it every step of eq. 12 (any ``eta``, and the sigma-hat step without clipping) is
``x_prev = g_k x + s_k z_k`` per coordinate, with ``z_k ~ N(0, 1)``. From ``x_T ~ N(0, 1)``
the output is therefore ``N(0, v)`` with ``v`` given by the recursion::

    v_0 = 1,    v_k = g_k^2 v_{k-1} + s_k^2                                            (2)

:func:`output_law` reads ``g_k`` and ``s_k`` off the real :func:`ddim.sample` instead of
re-deriving them (and the law of any other solver from its responses to unit inputs).
The Fréchet distance between
``N(0, diag(v))`` and the data law is then the exact squared 2-Wasserstein distance::

    FD = W2^2 = sum_i (sqrt(v_i) - sqrt(lambda_i))^2                                   (3)

with no Monte Carlo error. Natural images have power spectra ``~ 1/f^2``, i.e. covariance
eigenvalues ``lambda_k ~ k^-1`` in rank order; :func:`power_law_spectrum` builds such a
``lambda``. :func:`mixture_fd` is the Monte Carlo counterpart for a Gaussian mixture oracle.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch

from ddim.eval.metrics import FeatureStats, frechet_distance
from ddim.eval.reports import Row, run_grid
from ddim.models.oracle import GaussianMixture
from ddim.noise import seeded_latents
from ddim.sampling import SamplerOptions, Step, sample
from ddim.schedule import NoiseSchedule

F64 = torch.float64


def power_law_spectrum(dim: int, alpha: float = 1.0) -> torch.Tensor:
    """``lambda_k = k^-alpha`` for ``k = 1 .. dim`` (float64): largest variance 1."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    return torch.arange(1, dim + 1, dtype=F64) ** -alpha


class DiagonalGaussian:
    """The exact ``eps*`` of eq. (1) for ``N(0, diag(lambda))``, a sampler-ready callable."""

    def __init__(self, lam: torch.Tensor, sched: NoiseSchedule) -> None:
        lam = torch.as_tensor(lam, dtype=F64)
        if lam.ndim != 1 or lam.numel() < 1:
            raise ValueError(f"lambda must be a non-empty 1-D tensor, got {tuple(lam.shape)}")
        if not (torch.isfinite(lam).all() and (lam > 0).all()):
            raise ValueError("lambda must be finite and > 0")
        self.lam = lam
        self.sched = sched
        self._alpha_bar = sched.alpha_bar

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``eps*(x, t)`` for ``x`` ``(B, D)`` and ``t`` a LongTensor ``(B,)``."""
        if x.ndim != 2 or x.shape[1] != self.lam.numel():
            raise ValueError(f"x must have shape (B, {self.lam.numel()}), got {tuple(x.shape)}")
        a = self._alpha_bar.to(x.device)[t.to(x.device)][:, None]
        lam = self.lam.to(x.device)
        return ((1 - a).sqrt() * x / (a * lam + 1 - a)).to(x.dtype)


def output_law(
    lam: torch.Tensor, sched: NoiseSchedule, options: SamplerOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact output law of a run with ``options`` on :class:`DiagonalGaussian`: the
    per-coordinate gain ``g`` of ``x_T`` and the variance ``v`` of the output.

    Every sampler is linear in ``x_T`` and its step noise there, and :func:`ddim.sample`
    itself runs, in float64 with clipping off (it would make the step nonlinear), on two
    kinds of input:

    - a one-step sampler (``ddim``: eq. 12, any ``eta``, sigma-hat) is a Markov chain
      ``x_k = g_k x_{k-1} + s_k z_k``, so two rows suffice: one from ``x_T = 1`` with no
      noise (its state after step ``k`` is ``prod_{j<=k} g_j``) and one from ``x_T = 0``
      with ``z_k = 1`` at every step (state ``y_k = g_k y_{k-1} + s_k``), read after each
      step into eq. (2);
    - a multistep solver carries noise into later steps through its history, so row
      ``k + 1`` starts at 0 with a unit ``z`` at stochastic step ``k`` alone (its output is
      that step's contribution ``c_k``) and row 0 at ``x_T = 1``: ``v = g^2 + sum_k c_k^2``.
    """
    oracle = DiagonalGaussian(lam, sched)
    options = replace(options, clip_denoised=False)
    dim = oracle.lam.numel()
    n_noise = options.plan(sched).stochastic_steps if options.stochastic else 0
    if options.solver == "ddim":
        x_T = torch.stack([torch.ones(dim, dtype=F64), torch.zeros(dim, dtype=F64)])
        ones = torch.tensor([0.0, 1.0], dtype=F64)[None, :, None].expand(n_noise, 2, dim)
        state = {"prev": x_T, "var": torch.ones(dim, dtype=F64)}

        def track(step: Step) -> None:
            prev, x = state["prev"], step.x
            gain = x[0] / prev[0]  # g_k
            kick = x[1] - gain * prev[1]  # s_k
            state["var"] = gain**2 * state["var"] + kick**2
            state["prev"] = x

        out = options.sample(oracle, x_T, sched, noise=ones if n_noise else None, callback=track)
        return out[0], state["var"]
    x_T = torch.zeros(1 + n_noise, dim, dtype=F64)
    x_T[0] = 1.0
    # noise[k] is 1 on row k + 1 alone: a view of an identity, not n_noise^2 * dim numbers.
    impulses = torch.eye(1 + n_noise, dtype=F64)[1:, :, None].expand(-1, -1, dim)
    out = options.sample(oracle, x_T, sched, noise=impulses if n_noise else None)
    return out[0], (out**2).sum(0)


def output_variance(
    lam: torch.Tensor,
    sched: NoiseSchedule,
    steps: int | Sequence[int],
    spacing: str = "uniform",
    eta: float = 0.0,
    variance: str = "ddim",
) -> torch.Tensor:
    """The exact per-coordinate variance ``v`` of eq. 12's output (:func:`output_law`)."""
    options = SamplerOptions(steps=steps, spacing=spacing, eta=eta, variance=variance)
    return output_law(lam, sched, options)[1]


def gaussian_w2(var: torch.Tensor, lam: torch.Tensor) -> float:
    """Eq. (3): ``W2^2`` between ``N(0, diag(var))`` and ``N(0, diag(lam))``."""
    return float(((var.sqrt() - lam.sqrt()) ** 2).sum())


def exact_grid(
    lam: torch.Tensor,
    sched: NoiseSchedule,
    steps_list: Sequence[int],
    etas: Sequence[float],
    sigma_hat: bool = True,
    spacing: str = "uniform",
) -> list[Row]:
    """The exact FD (eq. 3) for every ``S`` in ``steps_list`` and every row of Table 1."""

    def fd_of(steps: int, eta: float, variance: str) -> float:
        return gaussian_w2(output_variance(lam, sched, steps, spacing, eta, variance), lam)

    return run_grid(fd_of, steps_list, etas, sigma_hat)


def mixture_grid(
    mixture: GaussianMixture,
    steps_list: Sequence[int],
    etas: Sequence[float],
    sigma_hat: bool = True,
    spacing: str = "uniform",
    n: int = 10_000,
    seed: int = 0,
) -> list[Row]:
    """:func:`mixture_fd` for every cell of the grid (the same ``x_T`` in every cell)."""

    def fd_of(steps: int, eta: float, variance: str) -> float:
        return mixture_fd(mixture, n, steps, spacing, eta, variance, seed)

    return run_grid(fd_of, steps_list, etas, sigma_hat)


def mixture_fd(
    mixture: GaussianMixture,
    n: int,
    steps: int | Sequence[int],
    spacing: str = "uniform",
    eta: float = 0.0,
    variance: str = "ddim",
    seed: int = 0,
    batch_size: int = 1000,
) -> float:
    """Monte Carlo FD between ``n`` samples of ``ddim.sample`` on ``mixture`` and its law.

    Sample ``i`` uses seed ``seed + i``; x0_pred is not clipped. The reference is the
    mixture's exact mean and covariance, so the estimate carries the error of ``n`` draws;
    :func:`mixture_floor` measures that error on true draws.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")

    def batch(lo: int) -> torch.Tensor:
        seeds = range(seed + lo, seed + min(lo + batch_size, n))
        x_T, gens = seeded_latents(seeds, mixture.shape, dtype=F64)
        x0 = sample(
            mixture, x_T, mixture.sched, steps=steps, spacing=spacing, eta=eta,
            variance=variance, clip_denoised=False, generators=gens,
        )  # fmt: skip
        return x0.reshape(x0.shape[0], -1)

    stats = FeatureStats.of_batches(batch(lo) for lo in range(0, n, batch_size))
    return frechet_distance(stats.mu, stats.sigma, mixture.mean.numpy(), mixture.covariance.numpy())


def mixture_floor(mixture: GaussianMixture, n: int, seed: int = 0) -> float:
    """The FD of ``n`` exact draws from ``mixture`` to its law: the Monte Carlo floor."""
    x = mixture.sample(n, torch.Generator().manual_seed(seed))
    stats = FeatureStats.from_features(x.reshape(n, -1))
    return frechet_distance(stats.mu, stats.sigma, mixture.mean.numpy(), mixture.covariance.numpy())
