"""Noise schedules and the timestep sequences that DDIM samples over.

Indexing follows the official DDIM code: timesteps are ``t = 0 .. T-1`` (the paper's
``t`` is ours plus one), ``alpha_bar(t) = prod_{s <= t} (1 - beta_s)`` (the paper's
``alpha_t``, eq. 4) and ``alpha_bar(-1) = 1`` by convention, so that the last sampling
step lands on the data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ddim.names import NOISE_LEVEL_SPACINGS, SCHEDULES, SPACINGS


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """An immutable variance schedule ``beta_0 .. beta_{T-1}`` held in float64.

    Build one with :meth:`linear`, :meth:`cosine` or :meth:`from_betas`.
    """

    betas: torch.Tensor
    alpha_bar: torch.Tensor = field(init=False)
    _alpha_bar_host: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64).detach().cpu().clone()
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(
                f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}"
            )
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
            raise ValueError("betas must be finite and lie strictly between 0 and 1")
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alpha_bar", alpha_bar)
        object.__setattr__(self, "_alpha_bar_host", tuple(alpha_bar.tolist()))

    @classmethod
    def linear(
        cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """Ho et al. (2020): betas evenly spaced from ``beta_start`` to ``beta_end``.

        The betas are numpy's ``linspace`` in float64, bit for bit the official code's.
        """
        _check_num_timesteps(num_timesteps)
        return cls.from_betas(np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64))

    @classmethod
    def quad(
        cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> NoiseSchedule:
        """The official code's ``quad`` betas (diffusers' ``scaled_linear``): the squares of
        ``linspace(sqrt(beta_start), sqrt(beta_end), T)``."""
        _check_num_timesteps(num_timesteps)
        return cls.from_betas(np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps) ** 2)

    @classmethod
    def cosine(
        cls, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
    ) -> NoiseSchedule:
        """Nichol & Dhariwal (2021), eq. 17: ``alpha_bar(t) ~ cos^2((t/T + s) / (1 + s) * pi/2)``.

        Betas are ``1 - alpha_bar(t+1) / alpha_bar(t)`` clipped at ``max_beta``.
        """
        _check_num_timesteps(num_timesteps)

        def f(t: float) -> float:
            return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - f(i + 1) / f(i), max_beta) for i in range(num_timesteps)]
        return cls(torch.tensor(betas, dtype=torch.float64))

    @classmethod
    def from_betas(cls, betas: Sequence[float] | np.ndarray | torch.Tensor) -> NoiseSchedule:
        """A schedule from explicit betas (cast to float64)."""
        return cls(torch.as_tensor(np.asarray(betas, dtype=np.float64)))

    @property
    def num_timesteps(self) -> int:
        """``T``, the number of training timesteps."""
        return self.betas.numel()

    def alpha_bar_at(self, t: int) -> float:
        """``alpha_bar(t)`` as a host float, with ``alpha_bar(-1) = 1``."""
        if t == -1:
            return 1.0
        if not 0 <= t < self.num_timesteps:
            raise ValueError(f"timestep {t} is outside 0..{self.num_timesteps - 1}")
        return self._alpha_bar_host[t]

    def q_sample(self, x0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """The forward process at one timestep ``t`` (DDIM eq. 4):
        ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise``, the coefficients host floats as the
        samplers' are (``t = -1`` gives ``x0``); :func:`q_sample` takes one ``t`` a row."""
        a = self.alpha_bar_at(t)
        return math.sqrt(a) * x0 + math.sqrt(1 - a) * noise

    def q_renoise(self, x: torch.Tensor, t: int, t_up: int, noise: torch.Tensor) -> torch.Tensor:
        """The forward process from timestep ``t`` up to ``t_up > t`` (Ho et al. eq. 2,
        composed): ``sqrt(a_up / a) x + sqrt(1 - a_up / a) noise``, RePaint's way back up."""
        ratio = self.alpha_bar_at(t_up) / self.alpha_bar_at(t)
        return math.sqrt(ratio) * x + math.sqrt(1 - ratio) * noise

    def timesteps(self, steps: int | Sequence[int], spacing: str = "uniform") -> torch.Tensor:
        """The timesteps to sample at, largest first, as a LongTensor.

        ``steps`` is a number of steps ``S`` (laid out by ``spacing``) or an explicit
        sequence of timesteps in ``0..T-1``. Spacings, for ``T = 1000``, ``S = 10``:

        - ``uniform`` — the official code's ``range(0, T, T // S)``: 0, 100, ..., 900.
          The paper's choice for CelebA and LSUN. When ``S`` does not divide ``T`` this
          yields more than ``S`` timesteps, exactly as the official code does.
        - ``quad`` — the official ``int(s)`` of ``linspace(0, sqrt(0.8 T), S) ** 2``:
          0, 9, 39, 88, 158, 246, 355, 483, 632, 800. The paper's choice for CIFAR10.
          Large ``S`` gives repeated values; a repeat is a zero-length step, skipped.
        - ``linspace`` — ``round(linspace(0, T - 1, S))``: 0, 111, ..., 999 (diffusers' "linspace").
        - ``trailing`` — ``round(arange(T, 0, -T / S)) - 1``: 999, 899, ..., 99 (diffusers'
          "trailing"); it starts at the last training timestep and never visits ``t = 0``.
        - ``logsnr`` — uniform in ``lambda_t = log(sqrt(a_t / (1 - a_t)))`` from ``t = T - 1``
          to ``t = 0`` (DPM-Solver's default layout): 999, 886, 757, ..., 5, 0 for the linear
          schedule.
        - ``karras`` — Karras et al. (2022, eq. 5) with ``rho = 7`` in
          ``sigma~_t = sqrt((1 - a_t) / a_t)``, from ``t = T - 1`` to ``t = 0``: 999, 937,
          ..., 18, 0.

        The last two are mapped to the nearest integer timesteps (linear interpolation of
        ``lambda`` or ``log sigma~`` over ``t``), then nudged apart so that no timestep
        repeats.
        """
        T = self.num_timesteps
        if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
            if spacing in NOISE_LEVEL_SPACINGS:
                return torch.tensor(self._by_noise_level(int(steps), spacing), dtype=torch.long)
            return torch.tensor(_spaced(int(steps), T, spacing), dtype=torch.long)
        seq = [int(t) for t in steps]
        if not seq:
            raise ValueError("an explicit timestep sequence must not be empty")
        bad = [t for t in seq if not 0 <= t < T]
        if bad:
            raise ValueError(f"timesteps {bad[:5]} are outside 0..{T - 1}")
        return torch.tensor(sorted(seq, reverse=True), dtype=torch.long)

    def _by_noise_level(self, S: int, spacing: str) -> list[int]:
        """``S`` distinct timesteps placed by noise level (``logsnr``/``karras``), largest first."""
        T = self.num_timesteps
        if not 1 <= S <= T:
            raise ValueError(f"steps must be between 1 and T={T}, got {S}")
        a = self.alpha_bar.double().numpy()
        if spacing == "logsnr":
            level = 0.5 * np.log(a / (1 - a))  # decreasing in t
            targets = np.linspace(level[-1], level[0], S)
        else:
            level = -0.5 * np.log((1 - a) / a)  # -log sigma~, decreasing in t
            rho = KARRAS_RHO
            s_max, s_min = np.sqrt((1 - a[-1]) / a[-1]), np.sqrt((1 - a[0]) / a[0])
            ramp = np.linspace(0, 1, S)
            targets = -np.log(
                (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
            )
        t = np.interp(targets, level[::-1], np.arange(T, dtype=np.float64)[::-1])
        return _distinct(np.round(t).astype(np.int64).tolist(), T)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor
             ) -> torch.Tensor:  # fmt: skip
    """The forward process with one timestep a row (``t`` a LongTensor ``(B,)``, as training
    draws them): ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise``; ``alpha_bar``
    is the schedule's float64 table on ``x0``'s device (the coefficients are computed in
    float64)."""
    a = alpha_bar[t].view(-1, *([1] * (x0.ndim - 1)))
    return a.sqrt().to(x0.dtype) * x0 + (1 - a).sqrt().to(x0.dtype) * noise


def _distinct(ts: list[int], T: int) -> list[int]:
    """``ts`` (any order) made strictly monotone in ``0..T-1`` by moving repeats by the least
    amount, largest first."""
    up = sorted(ts)
    for k in range(1, len(up)):
        up[k] = max(up[k], up[k - 1] + 1)
    up[-1] = min(up[-1], T - 1)
    for k in range(len(up) - 2, -1, -1):
        up[k] = min(up[k], up[k + 1] - 1)
    return up[::-1]


def _check_num_timesteps(num_timesteps: int) -> None:
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be at least 1, got {num_timesteps}")


#: The spacings placed by noise level rather than by ``t``, and Karras et al.'s ``rho``.
KARRAS_RHO = 7.0


def _spaced(S: int, T: int, spacing: str) -> list[int]:
    """``S`` timesteps in ``0..T-1`` laid out by ``spacing``, largest first."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if not 1 <= S <= T:
        raise ValueError(f"steps must be between 1 and T={T}, got {S}")
    if spacing == "uniform":
        seq = list(range(0, T, T // S))
    elif spacing == "quad":
        seq = [int(s) for s in np.linspace(0, np.sqrt(T * 0.8), S) ** 2]
    elif spacing == "linspace":
        seq = np.linspace(0, T - 1, S).round().astype(np.int64).tolist()
    else:
        seq = (np.round(np.arange(T, 0, -T / S)).astype(np.int64) - 1).tolist()
    return sorted(seq, reverse=True)


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process: ``schedule`` is ``linear`` (with ``beta_start``/``beta_end``)
    or ``cosine`` (Nichol & Dhariwal), over ``num_timesteps`` steps."""

    schedule: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"diffusion.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.num_timesteps < 1:
            raise ValueError(f"diffusion.num_timesteps must be >= 1, got {self.num_timesteps}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(
                f"diffusion needs 0 < beta_start <= beta_end < 1, "
                f"got {self.beta_start}, {self.beta_end}"
            )

    def build(self) -> NoiseSchedule:
        """The :class:`NoiseSchedule` this config describes."""
        if self.schedule == "cosine":
            return NoiseSchedule.cosine(self.num_timesteps)
        return NoiseSchedule.linear(self.num_timesteps, self.beta_start, self.beta_end)
