"""The exact Gaussian benchmark against the real sampler and against Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ddim
from ddim.eval.exact_gaussian import (
    DiagonalGaussian,
    exact_grid,
    gaussian_w2,
    mixture_fd,
    mixture_floor,
    mixture_grid,
    output_variance,
    power_law_spectrum,
)
from ddim.eval.metrics import frechet_distance
from ddim.models.oracle import GaussianMixture

SCHED = ddim.NoiseSchedule.linear(1000)
F64 = torch.float64


def test_power_law_spectrum():
    lam = power_law_spectrum(4, 2.0)
    assert lam.tolist() == [1.0, 0.25, 1 / 9, 1 / 16]
    with pytest.raises(ValueError, match="alpha"):
        power_law_spectrum(4, -1.0)


def test_eps_star_matches_the_mixture_oracle_for_isotropic_data():
    """One isotropic component N(0, s^2 I) is the diagonal Gaussian with lambda = s^2."""
    mix = GaussianMixture(torch.zeros(1, 3, dtype=F64), 0.7, torch.ones(1, dtype=F64), SCHED)
    diag = DiagonalGaussian(torch.full((3,), 0.49, dtype=F64), SCHED)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.tensor([0, 10, 300, 700, 999])
    torch.testing.assert_close(diag(x, t), mix(x, t), rtol=1e-12, atol=1e-14)


def test_deterministic_sampler_is_the_tracked_linear_map():
    """eta = 0: x_0 = c x_T exactly, with v = c^2 from the tracked variance."""
    lam = power_law_spectrum(6, 1.5)
    x_T = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    for steps, spacing in [(10, "uniform"), (7, "quad"), ([999, 500, 20, 3], "uniform")]:
        x0 = ddim.sample(DiagonalGaussian(lam, SCHED), x_T, SCHED, steps=steps, spacing=spacing)
        c = output_variance(lam, SCHED, steps, spacing).sqrt()
        torch.testing.assert_close(x0, c * x_T, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("steps", "spacing", "eta", "variance"),
    [
        (10, "uniform", 0.5, "ddim"),
        pytest.param(20, "quad", 1.0, "ddim", marks=pytest.mark.slow),
        (10, "uniform", 0.0, "ddpm-large"),
    ],
)
def test_exact_variance_matches_monte_carlo(steps, spacing, eta, variance):
    """Sample variances of 20,000 draws of ddim.sample lie within 4.5 standard errors."""
    lam = power_law_spectrum(6, 1.5)
    n = 20_000
    x_T = torch.randn(n, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    x0 = ddim.sample(
        DiagonalGaussian(lam, SCHED), x_T, SCHED, steps=steps, spacing=spacing, eta=eta,
        variance=variance,
        clip_denoised=False, seed=7,
    )  # fmt: skip
    exact = output_variance(lam, SCHED, steps, spacing, eta, variance)
    z = (x0.var(dim=0) - exact) / (exact * math.sqrt(2 / (n - 1)))
    assert z.abs().max() < 4.5, z
    assert x0.mean(dim=0).abs().max() < 4.5 * exact.max().sqrt() / math.sqrt(n)


def test_w2_is_the_frechet_distance_of_diagonal_gaussians():
    var, lam = torch.tensor([1.0, 0.3, 0.02], dtype=F64), power_law_spectrum(3, 1.0)
    fd = frechet_distance(np.zeros(3), np.diag(var.numpy()), np.zeros(3), np.diag(lam.numpy()))
    assert gaussian_w2(var, lam) == pytest.approx(fd, rel=1e-12)


def test_exact_grid_has_the_shape_of_table_1():
    """Reference values (D = 3072, alpha = 1, uniform spacing), pinned to 1e-3."""
    lam = power_law_spectrum(3072, 1.0)
    rows = exact_grid(lam, SCHED, [10, 1000], [0.0, 1.0], sigma_hat=True)
    fd = {(r.label, r.steps): r.fd for r in rows}
    expected = {
        ("η = 0", 10): 2.142, ("η = 0", 1000): 0.01884,
        ("η = 1", 10): 2.766, ("η = 1", 1000): 0.04172,
        ("σ̂", 10): 190.2, ("σ̂", 1000): 0.0006281,
    }  # fmt: skip
    for key, value in expected.items():
        assert fd[key] == pytest.approx(value, rel=1e-3), key
    # the paper's ordering: eta = 0 best at few steps, sigma-hat best at S = 1000
    assert fd["η = 0", 10] < fd["η = 1", 10] < fd["σ̂", 10]
    assert fd["σ̂", 1000] < fd["η = 0", 1000] < fd["η = 1", 1000]


@pytest.mark.slow
def test_exact_fd_matches_a_large_monte_carlo_fd():
    """FD of 40,000 sampler draws to the data law equals the exact FD within its error.

    Over 8 seeds this Monte Carlo FD had mean 0.0949 and standard deviation 0.0011.
    """
    lam = power_law_spectrum(4, 1.0)
    exact = exact_grid(lam, SCHED, [10], [0.5], sigma_hat=False)[0].fd
    n = 40_000
    x_T = torch.randn(n, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    x0 = ddim.sample(DiagonalGaussian(lam, SCHED), x_T, SCHED, steps=10, eta=0.5, seed=11)
    mc = frechet_distance(
        x0.mean(0).numpy(), np.cov(x0.numpy(), rowvar=False), np.zeros(4), np.diag(lam.numpy())
    )
    assert exact == pytest.approx(0.09518, rel=1e-3)
    assert mc == pytest.approx(exact, abs=4 * 0.0011)


def mixture() -> GaussianMixture:
    means = torch.tensor([[1.0, 0.0, 0.5], [-0.5, 0.8, 0.0], [0.0, -1.0, -0.5]], dtype=F64)
    return GaussianMixture(means, 0.2, torch.tensor([0.5, 0.3, 0.2], dtype=F64), SCHED)


def test_mixture_monte_carlo_fd():
    mix = mixture()
    floor = mixture_floor(mix, 2000, seed=0)
    rows = mixture_grid(mix, [5, 50], [0.0], sigma_hat=True, n=2000, seed=0)
    fd = {(r.label, r.steps): r.fd for r in rows}
    assert 0 < floor < 0.01
    assert fd["η = 0", 5] > 0.1 > fd["η = 0", 50]
    assert fd["σ̂", 5] > fd["η = 0", 5]
    # the same seeds give the same draws whatever the batch size
    assert mixture_fd(mix, 300, 5, seed=4, batch_size=300) == pytest.approx(
        mixture_fd(mix, 300, 5, seed=4, batch_size=70), rel=1e-9
    )
