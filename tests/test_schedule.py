"""Noise schedules and the official timestep sequences, bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddim import NoiseSchedule


def official_uniform(T: int, S: int) -> list[int]:
    return list(range(0, T, T // S))


def official_quad(T: int, S: int) -> list[int]:
    return [int(s) for s in list(np.linspace(0, np.sqrt(T * 0.8), S) ** 2)]


def test_linear_matches_the_papers_betas() -> None:
    s = NoiseSchedule.linear(1000, 1e-4, 0.02)
    assert s.betas.dtype == torch.float64 and s.num_timesteps == 1000
    assert s.betas[0].item() == 1e-4 and s.betas[-1].item() == 0.02
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    np.testing.assert_array_equal(s.betas.numpy(), betas)
    np.testing.assert_allclose(s.alpha_bar.numpy(), np.cumprod(1 - betas), rtol=1e-13)
    assert s.alpha_bar_at(-1) == 1.0
    assert s.alpha_bar_at(0) == pytest.approx(1 - 1e-4, abs=0)
    # alpha_bar(T-1) for the paper's schedule, worked out once: ~4.04e-5.
    assert s.alpha_bar_at(999) == pytest.approx(4.0358e-5, rel=1e-3)


def test_cosine_follows_nichol_dhariwal() -> None:
    s = NoiseSchedule.cosine(1000)

    def f(t: float) -> float:
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 10, 500, 900):
        assert s.alpha_bar_at(t) == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert s.betas.max().item() == pytest.approx(0.999)


def test_from_betas_round_trip_and_validation() -> None:
    s = NoiseSchedule.from_betas([0.1, 0.2, 0.5])
    np.testing.assert_allclose(s.alpha_bar.numpy(), [0.9, 0.72, 0.36])
    with pytest.raises(ValueError, match="between 0 and 1"):
        NoiseSchedule.from_betas([0.1, 1.0])
    with pytest.raises(ValueError, match="non-empty"):
        NoiseSchedule.from_betas([])
    with pytest.raises(ValueError, match="outside"):
        s.alpha_bar_at(3)


@pytest.mark.parametrize("S", [10, 20, 50, 100, 1000])
def test_official_sequences(S: int) -> None:
    s = NoiseSchedule.linear()
    assert s.timesteps(S, "uniform").tolist() == sorted(official_uniform(1000, S), reverse=True)
    assert s.timesteps(S, "quad").tolist() == sorted(official_quad(1000, S), reverse=True)


def test_sequences_for_ten_steps_by_hand() -> None:
    s = NoiseSchedule.linear()
    assert s.timesteps(10, "uniform").tolist() == list(range(900, -1, -100))
    assert s.timesteps(10, "quad").tolist() == [800, 632, 483, 355, 246, 158, 88, 39, 9, 0]
    assert s.timesteps(10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert s.timesteps(10, "trailing").tolist() == list(range(999, 0, -100))
    assert s.timesteps(30, "uniform").numel() == 31  # the official range() overshoots S


def test_spacings_match_diffusers() -> None:
    diffusers = pytest.importorskip("diffusers")
    s = NoiseSchedule.linear()
    for spacing in ("linspace", "trailing"):
        for S in (7, 10, 50, 333):
            ref = diffusers.DDIMScheduler(timestep_spacing=spacing)
            ref.set_timesteps(S)
            assert s.timesteps(S, spacing).tolist() == ref.timesteps.tolist(), (spacing, S)


def test_explicit_sequence_is_sorted_and_checked() -> None:
    s = NoiseSchedule.linear(100)
    assert s.timesteps([0, 50, 10]).tolist() == [50, 10, 0]
    with pytest.raises(ValueError, match="outside 0..99"):
        s.timesteps([0, 100])


@pytest.mark.parametrize(
    ("steps", "spacing", "message"),
    [
        (0, "uniform", "between 1 and T=1000"),
        (1001, "quad", "between 1 and T=1000"),
        (10, "cubic", "unknown spacing 'cubic'"),
    ],
)
def test_bad_steps_and_spacing(steps: int, spacing: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NoiseSchedule.linear().timesteps(steps, spacing)
