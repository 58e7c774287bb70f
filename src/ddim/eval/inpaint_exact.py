"""Inpainting measured exactly: Gaussian data, exact ``eps*``, the exact law of the output.

For data ``x_0 ~ N(0, Sigma)`` the noised marginal is ``N(0, a Sigma + (1 - a) I)`` and the
Bayes-optimal noise predictor is linear (Tweedie)::

    eps*(x, t) = sqrt(1 - a) (a Sigma + (1 - a) I)^-1 x                                (1)

so every move of :func:`ddim.inpaint` (eq. 12 with η, the replacement of the known pixels by
their forward-noised values, RePaint's forward jumps) maps a Gaussian law ``N(m, C)`` to a
Gaussian law: ``x' = A x + b + S z`` gives ``m' = A m + b``, ``C' = A C A^T + S S^T``.
:func:`inpainting_law` propagates the law through the same walk as the real function, in
matrix form (an independent computation of it), and the exact answer is the conditional law
of the unknown pixels given the known ones::

    x_u | x_k  ~  N(Sigma_uk Sigma_kk^-1 x_k,  Sigma_uu - Sigma_uk Sigma_kk^-1 Sigma_ku)   (2)

Their squared 2-Wasserstein distance (the Fréchet distance of two Gaussians) is the bias of
the method, with no Monte Carlo error.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ddim.eval.metrics import frechet_distance
from ddim.inpaint import inpaint_moves, walk_name
from ddim.plan import StepPlan
from ddim.schedule import NoiseSchedule
from ddim.solvers.eq12 import ddim_sigma

F64 = torch.float64


class CorrelatedGaussian:
    """The exact ``eps*`` of eq. (1) for ``N(0, Sigma)`` on rows ``(B, D)``."""

    def __init__(self, cov: torch.Tensor, sched: NoiseSchedule) -> None:
        cov = torch.as_tensor(cov, dtype=F64)
        if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
            raise ValueError(f"the covariance must be a square matrix, got {tuple(cov.shape)}")
        self.cov, self.sched = cov, sched
        self.eigvals, self.eigvecs = torch.linalg.eigh(cov)

    def eps_matrix(self, t: int) -> torch.Tensor:
        """``M_t`` with ``eps*(x, t) = M_t x``."""
        a = self.sched.alpha_bar_at(t)
        inv = self.eigvecs @ torch.diag(1 / (a * self.eigvals + 1 - a)) @ self.eigvecs.T
        return math.sqrt(1 - a) * inv

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x, dtype=F64)
        for value in t.unique().tolist():
            rows = t == value
            out[rows] = x[rows].to(F64) @ self.eps_matrix(int(value)).T
        return out.to(x.dtype)


def conditional_law(cov: torch.Tensor, known: torch.Tensor, x_known: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Eq. (2): the mean and covariance of the unknown coordinates given the known values."""
    u, k = ~known, known
    s_uk = cov[u][:, k]
    gain = s_uk @ torch.linalg.inv(cov[k][:, k])
    return gain @ x_known[k], cov[u][:, u] - gain @ s_uk.T


def inpainting_law(
    oracle: CorrelatedGaussian,
    x0: torch.Tensor,
    known: torch.Tensor,
    *,
    steps: int,
    eta: float = 1.0,
    method: str = "replace",
    jump_length: int = 1,
    resample: int = 5,
    resample_below: float = 1.0,
    spacing: str = "uniform",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact mean and covariance of :func:`ddim.inpaint`'s output for one image ``x0``
    ``(D,)`` with known coordinates ``known`` (bool ``(D,)``), by ``replace``, ``repaint``
    or ``ddnm`` (whose projection of the prediction of ``x_0`` is linear too)."""
    sched = oracle.sched
    plan = StepPlan.build(sched, steps, spacing, "denoise")
    dim = x0.numel()
    eye = torch.eye(dim, dtype=F64)
    keep = torch.diag(known.to(F64))
    free = eye - keep
    m, c = torch.zeros(dim, dtype=F64), eye.clone()
    moves = inpaint_moves(plan, sched.num_timesteps, method, jump_length, resample, resample_below)
    for move, i in moves:
        if move == "up":
            r = plan.a[i] / plan.a[i + 1]
            m, c = math.sqrt(r) * m, r * c + (1 - r) * eye
            continue
        a_t, a_next = plan.a[i], plan.a[i + 1]
        s = ddim_sigma(a_t, a_next, eta)
        eps = oracle.eps_matrix(plan.ts[i])
        to_x0 = (eye - plan.sigma[i] * eps) / plan.alpha[i]
        direction = math.sqrt(max(1 - a_next - s**2, 0.0)) * eps
        if method == "ddnm":  # x0_pred <- free x0_pred + keep x0, then eq. 12
            step = math.sqrt(a_next) * free @ to_x0 + direction
            m = step @ m + math.sqrt(a_next) * (keep @ x0)
            c = step @ c @ step.T + s**2 * eye
            continue
        step = math.sqrt(a_next) * to_x0 + direction
        m, c = step @ m, step @ c @ step.T + s**2 * eye
        m = free @ m + math.sqrt(a_next) * (keep @ x0)
        c = free @ c @ free + (1 - a_next) * keep
    return m[~known], c[~known][:, ~known]


def inpainting_w2(
    oracle: CorrelatedGaussian, x0: torch.Tensor, known: torch.Tensor, **walk: object
) -> float:
    """The squared 2-Wasserstein distance of the unknown coordinates' law after inpainting
    to the exact conditional law (2)."""
    m, c = inpainting_law(oracle, x0, known, **walk)  # type: ignore[arg-type]
    m_true, c_true = conditional_law(oracle.cov, known, x0)
    return float(frechet_distance(m.numpy(), c.numpy(), m_true.numpy(), c_true.numpy()))


def ar1_covariance(dim: int, rho: float) -> torch.Tensor:
    """``Sigma_ij = rho^|i - j|``: a smooth 1-D signal whose halves predict each other."""
    idx = np.arange(dim)
    return torch.from_numpy(rho ** np.abs(idx[:, None] - idx[None, :]))


def bias_table(dim: int = 16, rho: float = 0.9, draws: int = 20) -> str:
    """The table of docs/results/inpainting-oracle.md: the mean W2^2 of each method over
    ``draws`` data draws, the first half of ``N(0, ar1_covariance(dim, rho))`` known, eta = 1."""
    oracle = CorrelatedGaussian(ar1_covariance(dim, rho), NoiseSchedule.linear())
    known = torch.arange(dim) < dim // 2
    chol = torch.linalg.cholesky(oracle.cov)
    gen = [torch.Generator().manual_seed(i) for i in range(draws)]
    data = [chol @ torch.randn(dim, generator=g, dtype=F64) for g in gen]
    runs = [(20, "replace", 1, 1, 1.0), (100, "replace", 1, 1, 1.0), (20, "repaint", 5, 1, 1.0),
            (20, "repaint", 5, 5, 1.0), (20, "repaint", 10, 1, 1.0), (100, "repaint", 5, 1, 1.0),
            (100, "repaint", 10, 1, 1.0), (20, "ddnm", 1, 1, 1.0), (20, "ddnm", 5, 1, 1.0),
            (20, "ddnm", 5, 2, 1.0), (20, "ddnm", 5, 2, 0.5), (20, "ddnm", 15, 2, 0.5),
            (100, "ddnm", 1, 1, 1.0)]  # fmt: skip
    lines = ["| method | steps | model calls | W2² to the exact conditional law |",
             "|---|---:|---:|---:|"]  # fmt: skip
    names = {"replace": "replacement", "repaint": "RePaint", "ddnm": "DDNM"}
    for steps, method, r, j, below in runs:
        walk = {"steps": steps, "method": method, "resample": r, "jump_length": j,
                "resample_below": below}  # fmt: skip
        w2 = sum(inpainting_w2(oracle, x, known, **walk) for x in data) / draws
        plan = StepPlan.build(oracle.sched, steps)
        moves = inpaint_moves(plan, oracle.sched.num_timesteps, method, j, r, below)
        calls = sum(m == "down" for m, _ in moves)
        lines.append(f"| {names[method]}{walk_name(r, j, below)} | {steps} | {calls} | {w2:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(bias_table())
