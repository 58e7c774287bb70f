"""The exact noise predictors of ``ddim.models.oracle`` and the samplers run on them.

Conventions: ``a_t = alpha_bar(t)`` of the linear schedule, ``T = 1000``, and the DDIM
change of variables ``xbar = x / sqrt(a)``, ``sigma = sqrt((1 - a) / a)``, in which the
``eta = 0`` step is an Euler step ``xbar_prev = xbar + (sigma_prev - sigma) eps`` (DDIM eq. 14).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import ddim
from ddim.models import oracle
from ddim.models.oracle import EmpiricalData, GaussianMixture

T = 1000
SCHED = ddim.NoiseSchedule.linear(T)
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mixture_2d() -> GaussianMixture:
    means = torch.tensor([[1.5, 0.0], [-1.0, 1.0], [0.0, -2.0]], dtype=F64)
    return GaussianMixture(
        means,
        torch.tensor([0.4, 0.7, 0.3], dtype=F64),
        torch.tensor([0.5, 0.3, 0.2], dtype=F64),
        SCHED,
    )


def mixture_image() -> GaussianMixture:
    means = torch.randn(3, 2, 3, 3, generator=gen(1), dtype=F64)
    return GaussianMixture(
        means,
        torch.tensor([0.5, 0.8, 0.3], dtype=F64),
        torch.tensor([0.2, 0.3, 0.5], dtype=F64),
        SCHED,
    )


def empirical_2d() -> EmpiricalData:
    return EmpiricalData(torch.randn(64, 2, generator=gen(2), dtype=F64), SCHED)


def empirical_image() -> EmpiricalData:
    return EmpiricalData(torch.randn(40, 2, 3, 3, generator=gen(3), dtype=F64), SCHED)


ORACLES = {
    "mixture-2d": mixture_2d,
    "mixture-image": mixture_image,
    "empirical-2d": empirical_2d,
    "empirical-image": empirical_image,
}


def noised(orc, t: torch.Tensor, seed: int) -> torch.Tensor:
    """Draws of ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) z`` (DDIM eq. 4), one ``t`` per row."""
    g = gen(seed)
    x0 = orc.sample(t.numel(), g).to(F64)
    a = SCHED.alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g, dtype=F64)


def alpha(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``a_t`` broadcast against ``like``, with ``alpha_bar(-1) = 1``."""
    a = torch.cat([torch.ones(1, dtype=F64), SCHED.alpha_bar])[t + 1]
    return a.reshape(-1, *([1] * (like.ndim - 1)))


# --- 1. eps* is Tweedie's formula applied to log_prob -----------------------------------------


@pytest.mark.parametrize("name", list(ORACLES))
@pytest.mark.parametrize("t_mode", ["small", "middle", "last", "per-row"])
def test_eps_is_minus_scaled_score_of_log_prob(name: str, t_mode: str) -> None:
    orc = ORACLES[name]()
    n = 24
    ts = {
        "small": torch.zeros(n, dtype=torch.long),
        "middle": torch.full((n,), 500, dtype=torch.long),
        "last": torch.full((n,), T - 1, dtype=torch.long),
        "per-row": torch.randint(0, T, (n,), generator=gen(4)),
    }[t_mode]
    x = noised(orc, ts, seed=5).requires_grad_(True)
    (grad,) = torch.autograd.grad(orc.log_prob(x, ts).sum(), x)
    expected = -(1 - alpha(ts, x)).sqrt() * grad  # Tweedie, eq. (1) of ddim.models.oracle
    eps = orc(x.detach(), ts)
    assert eps.shape == x.shape and eps.dtype == F64
    # Both sides are the same float64 sums assembled two ways: agreement to ~1e-14
    # relative is typical; 1e-10 leaves room for the one-hot small-t case.
    scale = expected.abs().max()
    assert (eps - expected).abs().max() <= 1e-10 * scale


def test_mixture_log_prob_matches_scipy() -> None:
    orc = mixture_2d()
    x = torch.randn(16, 2, generator=gen(6), dtype=F64) * 2
    for t in (-1, 0, 300, T - 1):
        a = 1.0 if t == -1 else SCHED.alpha_bar_at(t)
        dens = sum(
            w * multivariate_normal(math.sqrt(a) * m, (a * s**2 + 1 - a) * np.eye(2)).pdf(x.numpy())
            for w, m, s in zip(
                orc.weights.numpy(), orc.means.numpy(), orc.stds.numpy(), strict=True
            )
        )
        np.testing.assert_allclose(orc.log_prob(x, t).numpy(), np.log(dens), rtol=1e-12)


def test_empirical_log_prob_matches_direct_sum() -> None:
    orc = empirical_2d()
    data = orc.data.numpy()
    x = torch.randn(16, 2, generator=gen(7), dtype=F64)
    for t in (0, 300, T - 1):
        a = SCHED.alpha_bar_at(t)
        sq = ((x.numpy()[:, None, :] - math.sqrt(a) * data[None]) ** 2).sum(-1)
        v = 1 - a
        direct = logsumexp(-sq / (2 * v), axis=1) - math.log(len(data)) - math.log(2 * math.pi * v)
        np.testing.assert_allclose(orc.log_prob(x, t).numpy(), direct, rtol=1e-12)


# --- 2. one Gaussian: eps* is linear in x ------------------------------------------------------


@pytest.mark.parametrize("shape", [(3,), (2, 4, 4)])
def test_single_gaussian_eps_is_the_linear_formula(shape: tuple[int, ...]) -> None:
    mu = torch.randn(1, *shape, generator=gen(8), dtype=F64)
    s = 0.6
    orc = GaussianMixture(mu, s, torch.ones(1), SCHED)
    x = 3 * torch.randn(10, *shape, generator=gen(9), dtype=F64)
    for t in (0, 10, 500, T - 1):
        a = SCHED.alpha_bar_at(t)
        # N(sqrt(a) mu, (a s^2 + 1 - a) I): score -(x - sqrt(a) mu) / (a s^2 + 1 - a).
        expected = math.sqrt(1 - a) * (x - math.sqrt(a) * mu) / (a * s**2 + 1 - a)
        torch.testing.assert_close(orc(x, t), expected, rtol=1e-12, atol=1e-13)


# --- 3. robustness far away and at t = 0 --------------------------------------------------------


@pytest.mark.parametrize("name", list(ORACLES))
def test_far_away_points_are_finite(name: str) -> None:
    orc = ORACLES[name]()
    x = 1e3 * torch.randn(8, *orc.shape, generator=gen(10), dtype=F64)
    for t in (0, 1, 500, T - 1):
        for dtype in (F64, torch.float32):
            eps = orc(x.to(dtype), t)
            assert eps.dtype == dtype and torch.isfinite(eps).all()
        assert torch.isfinite(orc.log_prob(x, t)).all()


def test_empirical_at_t0_is_the_nearest_point_formula() -> None:
    """At ``t = 0``, ``1 - a = 1e-4``: responsibilities are one-hot on the nearest point."""
    orc = empirical_2d()
    a = SCHED.alpha_bar_at(0)
    x = torch.cat([1e3 * torch.randn(8, 2, generator=gen(11), dtype=F64), math.sqrt(a) * orc.data])
    nearest = orc.data[torch.cdist(x, math.sqrt(a) * orc.data).argmin(dim=1)]
    expected = (x - math.sqrt(a) * nearest) / math.sqrt(1 - a)
    eps = orc(x, 0)
    assert torch.isfinite(eps).all()
    # On a data point eps* is 0 but for the nearest other point (0.074 away), whose weight
    # exp(-a d^2 / 2(1 - a)) ~ 2e-12 leaves |eps*| ~ 1e-11 there: hence atol 1e-9.
    torch.testing.assert_close(eps, expected, rtol=1e-12, atol=1e-9)


# --- 4. DDIM on the exact eps* recovers the data distribution -----------------------------------


def test_ddim_recovers_mixture_mean_and_covariance() -> None:
    orc = mixture_2d()
    n = 4000
    g = gen(12)
    a_T = SCHED.alpha_bar_at(T - 1)
    # x_T from the exact marginal at t = T-1, so that only discretisation and Monte Carlo
    # error remain (N(0, I) is off by a_T ~ 4e-5 in the mean's scale).
    x_T = math.sqrt(a_T) * orc.sample(n, g) + math.sqrt(1 - a_T) * torch.randn(
        n, 2, generator=g, dtype=F64
    )
    x0 = ddim.sample(orc, x_T, SCHED, steps=T, eta=0.0)
    m_hat = x0.mean(dim=0)
    c = x0 - m_hat
    cov_hat = c.T @ c / n
    # Standard errors: sqrt(Var x_i / n) for the mean; for entry (i, j) of the covariance the
    # sample std of (x_i - m_i)(x_j - m_j) over sqrt(n). Five of them bound a deviation
    # (two-sided tail 6e-7 each, so the 5 distinct checks pass for any honest seed).
    se_mean = cov_hat.diagonal().sqrt() / math.sqrt(n)
    se_cov = (c[:, :, None] * c[:, None, :]).std(dim=0) / math.sqrt(n)
    assert ((m_hat - orc.mean).abs() <= 5 * se_mean).all()
    assert ((cov_hat - orc.covariance).abs() <= 5 * se_cov).all()


def test_ddim_gaussian_converges_to_the_flow_as_steps_grow() -> None:
    """One Gaussian ``N(mu, s^2 I)``: each DDIM step is affine, so the output is exact.

    With ``eps* = sigma (xbar - mu) / (s^2 + sigma^2)``, a step multiplies ``xbar - mu`` by
    ``1 + (sigma_prev - sigma) sigma / (s^2 + sigma^2)``. The exact flow maps ``x_T = sqrt(a_T)
    mu + sqrt(a_T s^2 + 1 - a_T) z`` to ``mu + s z``; DDIM with ``S`` steps gives ``mu + g_S s z``.
    """
    mu, s, n = torch.tensor([1.0, -2.0], dtype=F64), 0.5, 4000
    orc = GaussianMixture(mu[None], s, torch.ones(1), SCHED)
    z = torch.randn(n, 2, generator=gen(13), dtype=F64)
    a_T = SCHED.alpha_bar_at(T - 1)
    x_T = math.sqrt(a_T) * mu + math.sqrt(a_T * s**2 + 1 - a_T) * z
    exact = mu + s * z
    cov_exact = torch.cov(exact.T, correction=0)

    def sigma(t: int) -> float:
        a = SCHED.alpha_bar_at(t)
        return math.sqrt((1 - a) / a)

    cov_errors, sample_errors = [], []
    for steps in (10, 50, T):
        ts = SCHED.timesteps(steps, "linspace").tolist()  # every S starts at T-1
        gain = math.sqrt(1 + sigma(T - 1) ** 2 / s**2)
        for t, t_prev in zip(ts, ts[1:] + [-1], strict=True):
            gain *= 1 + (sigma(t_prev) - sigma(t)) * sigma(t) / (s**2 + sigma(t) ** 2)
        x0 = ddim.sample(orc, x_T, SCHED, steps=steps, spacing="linspace")
        torch.testing.assert_close(x0, mu + gain * s * z, rtol=1e-10, atol=1e-10)
        cov_errors.append((torch.cov(x0.T, correction=0) - s**2 * torch.eye(2)).norm().item())
        sample_errors.append((torch.cov(x0.T, correction=0) - cov_exact).norm().item())
    # Discretisation error alone (same z), relative: |g_S^2 - 1| = 0.48, 0.11, 0.006 (first
    # order in 1/S). Strictly decreasing, and below 1% at S = T.
    assert sample_errors[0] > sample_errors[1] > sample_errors[2]
    assert sample_errors[2] < 0.01 * cov_exact.norm().item()
    # Against the true s^2 I: decreasing too, down to the Monte Carlo floor. The Frobenius
    # error of a 2x2 sample covariance of n Gaussians has sd ~ s^2 sqrt(3 / n) ~ 0.007.
    assert cov_errors[0] > cov_errors[1] > cov_errors[2]
    assert cov_errors[2] < 5 * s**2 * math.sqrt(3 / n)


# --- 5. deterministic encoding round trip -------------------------------------------------------


def test_invert_then_sample_reconstructs_x0() -> None:
    orc = mixture_2d()
    x0 = orc.sample(256, gen(14))
    rms = []
    for steps in (10, 50, 200):
        x_T = ddim.invert(orc, x0, SCHED, steps=steps)
        rec = ddim.sample(orc, x_T, SCHED, steps=steps)
        rms.append((rec - x0).pow(2).mean().sqrt().item())
    # First order in 1/S (observed 0.126, 0.031, 0.0081): each 4-5x step cuts it by > 2.5x.
    assert rms[1] < 0.4 * rms[0] and rms[2] < 0.4 * rms[1]
    assert rms[2] < 0.02


# --- 6. determinism and invariances --------------------------------------------------------------


@pytest.mark.parametrize("name", list(ORACLES))
def test_same_inputs_same_outputs(name: str) -> None:
    a, b = ORACLES[name](), ORACLES[name]()
    assert torch.equal(a.sample(32, gen(15)), b.sample(32, gen(15)))
    ts = torch.randint(0, T, (32,), generator=gen(16))
    x = noised(a, ts, seed=17)
    assert torch.equal(a(x, ts), b(x, ts))
    assert torch.equal(a.log_prob(x, ts), b.log_prob(x, ts))
    x_T = torch.randn(8, *a.shape, generator=gen(18), dtype=F64)
    assert torch.equal(ddim.sample(a, x_T, SCHED, steps=20), ddim.sample(b, x_T, SCHED, steps=20))


@pytest.mark.parametrize("name", list(ORACLES))
def test_chunking_and_batching_do_not_change_results(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    orc = ORACLES[name]()
    ts = torch.randint(0, T, (12,), generator=gen(19))
    x = noised(orc, ts, seed=20)
    eps, lp = orc(x, ts), orc.log_prob(x, ts)
    alone = torch.cat([orc(x[i : i + 1], ts[i : i + 1]) for i in range(12)])
    torch.testing.assert_close(alone, eps, rtol=1e-13, atol=1e-14)
    monkeypatch.setattr(oracle, "_CHUNK_ELEMENTS", 24)  # two components per chunk at B = 12
    torch.testing.assert_close(orc(x, ts), eps, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(orc.log_prob(x, ts), lp, rtol=1e-12, atol=0.0)


# --- properties, sampling of the clean data, validation -------------------------------------------


def test_mixture_mean_covariance_and_sample_agree() -> None:
    orc = mixture_2d()
    n = 100_000
    x = orc.sample(n, gen(21))
    # Means of 1e5 draws: sd sqrt(C_ii / n) <= 0.005; covariance entries: sd <= ~0.01.
    torch.testing.assert_close(x.mean(0), orc.mean, rtol=0, atol=0.02)
    torch.testing.assert_close(torch.cov(x.T), orc.covariance, rtol=0, atol=0.04)
    # Closed forms by hand for the first coordinate: E = 0.5*1.5 - 0.3 = 0.45;
    # E[x^2] = 0.5 (0.16 + 2.25) + 0.3 (0.49 + 1) + 0.2 (0.09) = 1.67, Var = 1.67 - 0.2025.
    assert orc.mean[0].item() == pytest.approx(0.45, abs=1e-15)
    assert orc.covariance[0, 0].item() == pytest.approx(1.4675, abs=1e-14)


def test_empirical_mean_covariance_and_sample() -> None:
    orc = empirical_image()
    flat = orc.data.reshape(40, -1)
    torch.testing.assert_close(orc.mean, flat.mean(0))
    torch.testing.assert_close(orc.covariance, torch.cov(flat.T, correction=0))
    draws = orc.sample(50, gen(22))
    assert draws.shape == (50, 2, 3, 3)
    assert all((orc.data == d).all(dim=(1, 2, 3)).any() for d in draws)


def test_ddim_runs_on_image_shaped_oracle() -> None:
    orc = mixture_image()
    x_T = torch.randn(6, 2, 3, 3, generator=gen(23), dtype=torch.float32)
    x0 = ddim.sample(orc, x_T, SCHED, steps=10)
    assert x0.shape == x_T.shape and x0.dtype == torch.float32 and torch.isfinite(x0).all()


def test_package_exposes_oracle() -> None:
    assert ddim.models.oracle.GaussianMixture is GaussianMixture


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": torch.tensor([0.5, 0.4])}, "sum to 1"),
        ({"weights": torch.tensor([1.2, -0.2])}, "weights must be finite and > 0"),
        ({"weights": torch.tensor([1.0])}, r"weights must have shape \(2,\)"),
        ({"stds": torch.tensor([0.5, 0.0])}, "stds must be finite and > 0"),
        ({"stds": torch.ones(3)}, r"stds must be a scalar or have shape \(2,\)"),
        ({"means": torch.zeros(2)}, "means must have shape"),
    ],
)
def test_mixture_rejects_bad_parameters(kwargs: dict, match: str) -> None:
    args = {"means": torch.zeros(2, 3), "stds": 1.0, "weights": torch.tensor([0.5, 0.5])}
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**{**args, **kwargs}, sched=SCHED)


def test_bad_calls_are_rejected() -> None:
    gm, emp = mixture_2d(), empirical_2d()
    x = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        gm(torch.zeros(4, 3), 0)
    with pytest.raises(ValueError, match=r"timesteps must lie in -1\.\.999"):
        gm(x, T)
    with pytest.raises(ValueError, match=r"timesteps must lie in 0\.\.999"):
        emp.log_prob(x, -1)
    with pytest.raises(ValueError, match="integer timesteps"):
        gm(x, torch.full((4,), 3.0))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        gm(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="data must have shape"):
        EmpiricalData(torch.zeros(5), SCHED)
    assert gm.log_prob(x, -1).shape == (4,)  # the clean density is defined for a mixture
