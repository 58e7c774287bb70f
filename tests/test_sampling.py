"""The generalized sampler against diffusers' schedulers, hand-worked values, and its contracts."""

from __future__ import annotations

import math

import pytest
import torch

import ddim


@pytest.fixture
def diffusers():
    """The diffusers package, for the tests that compare against it (skipped without it)."""
    return pytest.importorskip("diffusers")


def make_x_T(shape: tuple[int, ...] = (4, 3, 8, 8), seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("S", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_trajectory_equals_diffusers_ddim(diffusers, eps_model, sched, eta: float, S: int) -> None:
    x_T = make_x_T()
    noise = torch.randn(S, *x_T.shape, generator=torch.Generator().manual_seed(2))
    ref = diffusers.DDIMScheduler(
        set_alpha_to_one=True, clip_sample=False, timestep_spacing="leading", steps_offset=0
    )
    ref.set_timesteps(S)
    x, ref_xs = x_T, []
    for i, t in enumerate(ref.timesteps):
        x = ref.step(eps_model(x, t.expand(4)), t, x, eta=eta, variance_noise=noise[i]).prev_sample
        ref_xs.append(x)

    # Our noise= has a row per step that draws noise: all but the last, to alpha_bar = 1.
    out, traj = ddim.sample(
        eps_model, x_T, sched, steps=S, eta=eta, noise=noise[:-1], return_trajectory=True
    )
    assert traj.timesteps == ref.timesteps.tolist()
    assert len(traj.xs) == S + 1 and len(traj.x0_preds) == S
    for ours, theirs in zip(traj.xs[1:], ref_xs, strict=True):
        # diffusers keeps alpha_bar in float32, we in float64: they agree to float32 rounding.
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert torch.equal(out, traj.xs[-1])


@pytest.mark.slow
def test_thousand_steps_at_eta_one_equal_diffusers_ddpm(diffusers, eps_model, sched) -> None:
    x_T = make_x_T((2, 3, 4, 4))
    ref = diffusers.DDPMScheduler(variance_type="fixed_small", clip_sample=False)
    ref.set_timesteps(1000)
    x = x_T
    for i, t in enumerate(ref.timesteps):
        g = torch.Generator().manual_seed(i)
        x = ref.step(eps_model(x, t.expand(2)), t, x, generator=g).prev_sample
    # The noise diffusers drew at step i, reproduced.
    noise = torch.stack(
        [torch.randn(x_T.shape, generator=torch.Generator().manual_seed(i)) for i in range(1000)]
    )
    out = ddim.sample(eps_model, x_T, sched, steps=1000, eta=1.0, noise=noise[:-1])
    torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-4)


# A two-step schedule with round numbers: a_0 = 0.64, a_1 = 0.36
# (sqrt: 0.8 and 0.6; sqrt(1 - a): 0.6 and 0.8). The model returns eps = 0.5 everywhere.
HAND = ddim.NoiseSchedule.from_betas([0.36, 0.4375])


def half(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, 0.5)


def run_hand(**kwargs) -> ddim.Trajectory:
    x_T = torch.full((1, 1), 2.0, dtype=torch.float64)
    noise = torch.ones(1, 1, 1, dtype=torch.float64)  # the step to alpha_bar = 1 draws none
    _, traj = ddim.sample(half, x_T, HAND, steps=2, noise=noise, return_trajectory=True, **kwargs)
    return traj


def test_ddpm_large_step_worked_by_hand() -> None:
    # x0_pred = (2 - 0.8 * 0.5) / 0.6 = 8/3, clipped to 1 (the official ddpm_noisy clips).
    # beta = 1 - 0.36 / 0.64 = 0.4375; posterior mean
    #   (sqrt(0.64) * 0.4375 * 1 + sqrt(1 - 0.4375) * (1 - 0.64) * 2) / (1 - 0.36) = 0.89 / 0.64
    # plus sqrt(0.4375) * z with z = 1. The last step adds no noise and returns x0_pred = 1.
    traj = run_hand(variance="ddpm-large")
    assert traj.x0_preds[0].item() == 1.0
    assert traj.xs[1].item() == pytest.approx(0.89 / 0.64 + math.sqrt(0.4375), abs=1e-12)
    assert traj.xs[2].item() == 1.0


def test_ddpm_large_without_clipping_worked_by_hand() -> None:
    mean = (0.8 * 0.4375 * 8 / 3 + 0.75 * 0.36 * 2) / 0.64
    traj = run_hand(variance="ddpm-large", clip_denoised=False)
    assert traj.xs[1].item() == pytest.approx(mean + math.sqrt(0.4375), abs=1e-12)
    assert traj.xs[2].item() == pytest.approx((traj.xs[1].item() - 0.6 * 0.5) / 0.8, abs=1e-12)


def test_ddim_steps_worked_by_hand() -> None:
    # eta = 0: x_prev = 0.8 * 8/3 + 0.6 * 0.5; a constant eps keeps x0_pred at 8/3.
    traj = run_hand(eta=0.0)
    assert traj.xs[1].item() == pytest.approx(0.8 * 8 / 3 + 0.3, abs=1e-12)
    assert traj.xs[2].item() == pytest.approx(8 / 3, abs=1e-12)
    # eta = 1: sigma = sqrt(0.36 / 0.64) * sqrt(0.4375); the eps coefficient is
    # sqrt(1 - 0.64 - sigma^2) = 0.3375. Its mean equals the ddpm-large mean without clipping.
    sigma = 0.75 * math.sqrt(0.4375)
    traj = run_hand(eta=1.0)
    assert traj.xs[1].item() == pytest.approx(0.8 * 8 / 3 + 0.3375 * 0.5 + sigma, abs=1e-12)


def test_computation_runs_in_the_dtype_of_x_T() -> None:
    out = ddim.sample(half, torch.ones(2, 1, dtype=torch.float64), HAND, steps=2)
    assert out.dtype == torch.float64
    to64 = ddim.sample(lambda x, t: half(x, t).double(), torch.ones(2, 1), HAND, steps=2, eta=1.0)
    assert to64.dtype == torch.float32


def test_batch_invariance_with_seed(eps_model, sched) -> None:
    x_T = make_x_T((6, 3, 8, 8))
    full = ddim.sample(eps_model, x_T, sched, steps=10, eta=0.7, seed=100)
    head = ddim.sample(eps_model, x_T[:2], sched, steps=10, eta=0.7, seed=100)
    tail = ddim.sample(eps_model, x_T[2:], sched, steps=10, eta=0.7, seed=102)
    assert torch.equal(full, torch.cat([head, tail]))
    other = ddim.sample(eps_model, x_T, sched, steps=10, eta=0.7, seed=101)
    assert not torch.allclose(full, other)


def test_generators_continue_the_stream_of_x_T(eps_model, sched) -> None:
    """With ``generators=``, sample ``i``'s step noise is its generator's next draws after
    the one that made its ``x_T``: the run equals one given those draws as ``noise=``."""
    shape, n, steps = (3, 8, 8), 3, 10
    rows = ddim.SamplerOptions(steps=steps, eta=1.0).plan(sched).stochastic_steps
    gens = ddim.seeded_generators(5, n)
    x_T = torch.stack([torch.randn(shape, generator=g, dtype=torch.float64) for g in gens])
    out = ddim.sample(eps_model, x_T, sched, steps=steps, eta=1.0, generators=gens)

    streams = [
        [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(1 + rows)]
        for g in ddim.seeded_generators(5, n)
    ]  # each sample's x_T, then the z of every step that draws one
    assert torch.equal(torch.stack([s[0] for s in streams]), x_T)
    noise = torch.stack([torch.stack([s[1 + i] for s in streams]) for i in range(rows)])
    want = ddim.sample(eps_model, x_T, sched, steps=steps, eta=1.0, noise=noise)
    assert torch.equal(out, want)
    restarted = ddim.seeded_generators(5, n)  # not advanced past x_T: z_0 would repeat x_T
    again = ddim.sample(eps_model, x_T, sched, steps=steps, eta=1.0, generators=restarted)
    assert not torch.allclose(again, want)


def test_eta_zero_is_deterministic(eps_model, sched) -> None:
    x_T = make_x_T()
    a = ddim.sample(eps_model, x_T, sched, steps=20)
    b = ddim.sample(eps_model, x_T, sched, steps=20, seed=3)
    assert torch.equal(a, b)


def test_zero_length_steps_cost_no_model_call(sched) -> None:
    calls = []

    def counting(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(int(t[0]))
        return 0.1 * x

    _, traj = ddim.sample(
        counting, torch.zeros(1, 2), sched, steps=1000, spacing="quad", return_trajectory=True
    )
    unique = sorted(sched.timesteps(1000, "quad").unique().tolist(), reverse=True)
    assert len(calls) == len(unique) == 688
    assert calls == unique == traj.timesteps
    assert len(traj.xs) == len(traj.x0_preds) + 1 == 689


def test_callback_and_timestep_argument(sched) -> None:
    seen: list[tuple[int, int]] = []

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.long and t.shape == (3,)
        return torch.zeros_like(x)

    ddim.sample(
        model, torch.zeros(3, 2), sched, steps=5, callback=lambda s: seen.append((s.i, s.t))
    )
    assert seen == [(0, 800), (1, 600), (2, 400), (3, 200), (4, 0)]


def test_invert_is_exact_for_an_x_independent_eps(sched) -> None:
    # When eps depends on t alone, every DDIM step is affine with a known inverse.
    def eps_of_t(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(t.to(x.dtype) / 100).view(-1, 1).expand_as(x)

    x0 = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for spacing in ("uniform", "quad", "trailing"):
        x_T = ddim.invert(eps_of_t, x0, sched, steps=20, spacing=spacing)
        back = ddim.sample(eps_of_t, x_T, sched, steps=20, spacing=spacing)
        torch.testing.assert_close(back, x0, rtol=0, atol=1e-9)


def nan_at(t_bad: int):
    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = 0.1 * x
        return eps * float("nan") if int(t[0]) == t_bad else eps

    return model


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be between 1 and T=1000"),
        ({"steps": 1001}, "steps must be between 1 and T=1000"),
        ({"eta": -0.1}, "eta must be a finite number >= 0"),
        ({"eta": float("nan")}, "eta must be a finite number >= 0"),
        ({"eta": float("inf")}, "eta must be a finite number >= 0"),
        ({"spacing": "cubic"}, "unknown spacing 'cubic'"),
        ({"variance": "large"}, "unknown variance 'large'"),
        (
            {"eta": 1.0, "noise": torch.zeros(10, 2, 3)},
            r"noise has shape \(10, 2, 3\); expected \(9, 2, 3\)",
        ),
        (
            {"eta": 1.0, "generators": ddim.seeded_generators(0, 3)},
            "got 3 generators for a batch of 2",
        ),
    ],
)
def test_bad_arguments(sched, kwargs: dict, message: str) -> None:
    kwargs = {"steps": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        ddim.sample(lambda x, t: 0.1 * x, torch.zeros(2, 3), sched, **kwargs)


def test_eta_above_one_names_the_step_where_eq_12_breaks(eps_model, sched) -> None:
    x_T = make_x_T()
    with pytest.raises(ValueError, match="at step"):
        ddim.sample(eps_model, x_T, sched, steps=10, eta=1.5, seed=0)
    out = ddim.sample(eps_model, x_T, sched, steps=10, eta=1.0, seed=0)
    assert out.shape == x_T.shape and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "sources",
    [
        {"seed": 0, "noise": torch.zeros(10, 2, 3)},
        {"seed": 0, "generators": ddim.seeded_generators(0, 2)},
        {"generators": ddim.seeded_generators(0, 2), "noise": torch.zeros(10, 2, 3)},
    ],
    ids=lambda sources: " and ".join(sources),
)
def test_two_noise_sources_are_refused(sched, sources: dict) -> None:
    with pytest.raises(ValueError, match="at most one noise source"):
        ddim.sample(lambda x, t: 0.1 * x, torch.zeros(2, 3), sched, steps=10, eta=1.0, **sources)


def test_bad_model_output_names_step_and_t(sched) -> None:
    with pytest.raises(
        ValueError, match=r"model returned \(2, 4\) at step 0 \(t=900\); expected .*\(2, 3\)"
    ):
        ddim.sample(lambda x, t: torch.zeros(2, 4), torch.zeros(2, 3), sched, steps=10)
    with pytest.raises(ValueError, match=r"non-finite values at step 3 \(t=600\)"):
        ddim.sample(nan_at(600), torch.zeros(2, 3), sched, steps=10)
    with pytest.raises(ValueError, match=r"non-finite values at step 6 \(t=600\)"):
        ddim.invert(nan_at(600), torch.zeros(2, 3), sched, steps=10)
