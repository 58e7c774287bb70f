"""The solvers of ``ddim.sample(solver=...)``: DDIM's identity with the first-order log-SNR
step, order of convergence against the exact probability-flow ODE map of a Gaussian,
step-for-step equality with diffusers' schedulers, the mixture's moments, seeds, NFE, and
bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ddim
from ddim.eval.exact_gaussian import DiagonalGaussian, power_law_spectrum
from ddim.models.oracle import GaussianMixture
from ddim.names import EXACT_SOLVERS, SOLVERS
from ddim.noise import seeded_latents
from ddim.plan import StepPlan, first_order

F64 = torch.float64
SCHED = ddim.NoiseSchedule.linear()
ODE_SOLVERS = [s for s in SOLVERS if s != "dpmpp-2m-sde"]


class TanhEps:
    """A fixed, non-linear ε-model on ``(B, D)`` rows, the same for every library."""

    def __init__(self, dim: int = 16, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.w = torch.randn(dim, dim, generator=gen, dtype=F64) * 0.3
        self.a = SCHED.alpha_bar.double()

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.a[t][:, None].to(x.dtype)
        return torch.tanh(x @ self.w.to(x.dtype)) * (1 - a).sqrt() + 0.1 * x * a


def test_the_first_order_logsnr_step_is_the_ddim_step() -> None:
    """DESIGN: first order with D in log-SNR is exactly eq. 12 at eta = 0."""
    model = TanhEps()
    x_T = torch.randn(3, 16, generator=torch.Generator().manual_seed(1), dtype=F64)
    for spacing in ("uniform", "quad", "logsnr"):
        ts = SCHED.timesteps(20, spacing).tolist()
        plan = StepPlan.build(SCHED, ts, final_step="denoise")
        ours = x_T
        for i in range(plan.steps):
            eps = model(ours, torch.full((3,), plan.ts[i]))
            ours = first_order(plan, i, ours, (ours - plan.sigma[i] * eps) / plan.alpha[i])
        reference = ddim.sample(model, x_T, SCHED, steps=ts)
        torch.testing.assert_close(ours, reference, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------- order of convergence

FINE = ddim.NoiseSchedule.linear(100_000, 1e-6, 2e-4)  # the linear schedule, near-continuous t
LAM = power_law_spectrum(64, 1.0)


def _logsnr_grid(points: int, hi: int = 90_000, lo: int = 2_000) -> list[int]:
    a = FINE.alpha_bar.double().numpy()
    level = 0.5 * np.log(a / (1 - a))
    targets = np.linspace(level[hi], level[lo], points)
    t = np.interp(targets, level[::-1], np.arange(level.size, dtype=np.float64)[::-1])
    return sorted(set(np.round(t).astype(int).tolist()), reverse=True)


def ode_error(solver: str, steps: int) -> float:
    """Max relative error of ``solver``'s map against the exact ODE map
    ``x_k -> x_k s_k(t_end) / s_k(t_start)``, ``s_k(t)^2 = a_t lambda_k + 1 - a_t``, over
    ``steps`` steps uniform in log-SNR (the solvers are linear in x on this oracle)."""
    ts = _logsnr_grid(steps + 1)
    gain = ddim.sample(
        DiagonalGaussian(LAM, FINE), torch.ones(1, LAM.numel(), dtype=F64), FINE, steps=ts,
        solver=solver, final_step="none",
    )[0]  # fmt: skip

    def s(t: int) -> torch.Tensor:
        a = FINE.alpha_bar_at(t)
        return (a * LAM + 1 - a).sqrt()

    return float((gain / (s(ts[-1]) / s(ts[0])) - 1).abs().max())


@pytest.mark.parametrize(
    ("solver", "steps", "order"),
    [
        ("ddim", (16, 32, 64), 1.0),
        ("dpmpp-2m", (16, 32, 64), 2.0),
        ("heun", (16, 32, 64), 2.0),
        # The first-order warm-up step bounds 3M at order 2 on very fine grids; over 16-32
        # steps its own order shows.
        ("dpmpp-3m", (16, 32), 3.0),
        ("unipc", (16, 32, 64), 3.0),
    ],
)
def test_order_of_convergence_against_the_exact_ode_map(solver, steps, order) -> None:
    errors = [ode_error(solver, s) for s in steps]
    slopes = [math.log2(e0 / e1) for e0, e1 in zip(errors, errors[1:], strict=False)]
    assert all(abs(slope - order) < 0.25 for slope in slopes), (errors, slopes)


def test_plms_converges_at_second_order_after_its_warm_up() -> None:
    errors = [ode_error("plms", s) for s in (16, 32, 64)]
    slopes = [math.log2(e0 / e1) for e0, e1 in zip(errors, errors[1:], strict=False)]
    assert all(1.8 < slope < 2.4 for slope in slopes), (errors, slopes)


# ---------------------------------------------------------------- against diffusers


def _diffusers_run(scheduler, model, x_T, steps, noise=None):
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    for k, t in enumerate(scheduler.timesteps):
        eps = model(x, torch.full((x.shape[0],), int(t)))
        extra = {} if noise is None else {"variance_noise": noise[k]}
        x = scheduler.step(eps, t, x, **extra).prev_sample
    return x, sorted({int(t) for t in scheduler.timesteps}, reverse=True)


def _diffusers_scheduler(solver: str):
    diffusers = pytest.importorskip("diffusers")
    config = dict(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        timestep_spacing="trailing",
    )  # fmt: skip
    multistep = diffusers.DPMSolverMultistepScheduler
    return {
        "dpmpp-2m": lambda: multistep(**config, algorithm_type="dpmsolver++", solver_order=2),
        "dpmpp-3m": lambda: multistep(**config, algorithm_type="dpmsolver++", solver_order=3),
        "dpmpp-2m-sde": lambda: multistep(**config, algorithm_type="sde-dpmsolver++"),
        "unipc": lambda: diffusers.UniPCMultistepScheduler(**config),
        "plms": lambda: diffusers.PNDMScheduler(
            **config, skip_prk_steps=True, set_alpha_to_one=True
        ),
    }[solver]()


@pytest.mark.parametrize("solver", ["dpmpp-2m", "dpmpp-3m", "unipc", "plms", "dpmpp-2m-sde"])
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_matches_diffusers_step_for_step(solver, steps) -> None:
    """Same integer timesteps, same model; diffusers keeps its sigmas in float32, hence
    the 1e-6 (our float64 run agrees with itself to 1e-15)."""
    scheduler = _diffusers_scheduler(solver)
    model = TanhEps()
    x_T = torch.randn(4, 16, generator=torch.Generator().manual_seed(2), dtype=F64)
    noise = None
    if solver == "dpmpp-2m-sde":
        noise = torch.randn(steps, 4, 16, generator=torch.Generator().manual_seed(3), dtype=F64)
    reference, ts = _diffusers_run(scheduler, model, x_T, steps, noise)
    ours = ddim.sample(
        model, x_T, SCHED, steps=ts, solver=solver, final_step="denoise",
        noise=None if noise is None else noise[:-1],  # the last step, to alpha_bar = 1, draws none
    )  # fmt: skip
    scale = reference.abs().max()
    assert float((ours - reference).abs().max() / scale) < 1e-6


# ---------------------------------------------------------------- promises of sample()


def _mixture() -> GaussianMixture:
    means = torch.tensor([[1.5, -0.5, 0.0], [-1.0, 1.0, 0.5], [0.0, -1.5, -1.0]], dtype=F64)
    return GaussianMixture(means, 0.3, torch.tensor([0.5, 0.3, 0.2], dtype=F64), SCHED)


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_recovers_the_mixture_moments(solver) -> None:
    mixture = _mixture()
    x_T, gens = seeded_latents(range(4000), mixture.shape, dtype=F64)
    x0 = ddim.sample(mixture, x_T, SCHED, steps=50, spacing="logsnr", solver=solver,
                     generators=gens if solver == "dpmpp-2m-sde" else None)  # fmt: skip
    assert (x0.mean(0) - mixture.mean).abs().max() < 0.08
    assert (x0.T.cov() - mixture.covariance).abs().max() < 0.12


def rowwise_tanh_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An elementwise ε-model: unlike a matmul, its bits cannot depend on the batch size."""
    a = SCHED.alpha_bar.double()[t][:, None].to(x.dtype)
    return torch.tanh(x) * (1 - a).sqrt() + 0.1 * x * a


def test_the_sde_solver_is_batch_invariant_with_a_seed() -> None:
    model = rowwise_tanh_eps
    x_T, _ = seeded_latents(range(6), (16,), dtype=F64)
    whole = ddim.sample(model, x_T, SCHED, steps=10, solver="dpmpp-2m-sde", seed=7)
    parts = torch.cat([
        ddim.sample(model, x_T[:2], SCHED, steps=10, solver="dpmpp-2m-sde", seed=7),
        ddim.sample(model, x_T[2:], SCHED, steps=10, solver="dpmpp-2m-sde", seed=9),
    ])  # fmt: skip
    torch.testing.assert_close(whole[:2], parts[:2], rtol=0, atol=0)
    torch.testing.assert_close(whole[2:], parts[2:], rtol=0, atol=0)
    again = ddim.sample(model, x_T, SCHED, steps=10, solver="dpmpp-2m-sde", seed=8)
    assert (again - whole).abs().max() > 1e-3


@pytest.mark.parametrize("solver", ODE_SOLVERS)
def test_float32_in_float32_out_and_the_calls_counted(solver) -> None:
    calls = []
    model = TanhEps()

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(int(t[0]))
        return model(x, t)

    x_T = torch.randn(2, 16)
    seen = []
    x0, traj = ddim.sample(
        counted, x_T, SCHED, steps=8, spacing="logsnr", solver=solver, return_trajectory=True,
        callback=lambda step: seen.append(step.t),
    )  # fmt: skip
    assert x0.dtype == torch.float32 and torch.isfinite(x0).all()
    assert len(calls) == ddim.model_calls(SCHED, 8, "logsnr", solver)
    assert seen == traj.timesteps == SCHED.timesteps(8, "logsnr").tolist()
    assert len(traj.xs) == 9 and traj.xs[-1] is x0


def test_model_calls_by_hand() -> None:
    # quad S = 100 repeats timesteps: zero-length steps cost nothing.
    distinct = len(set(SCHED.timesteps(100, "quad").tolist()))
    assert distinct < 100
    assert ddim.model_calls(SCHED, 100, "quad") == distinct
    assert ddim.model_calls(SCHED, 10, solver="dpmpp-2m") == 10
    assert ddim.model_calls(SCHED, 10, solver="dpmpp-2m", final_step="none") == 9
    assert ddim.model_calls(SCHED, 10, solver="heun") == 2 * 10 - 1
    assert ddim.model_calls(SCHED, 10, solver="heun", final_step="none") == 2 * 9
    assert ddim.model_calls(SCHED, 10, solver="plms") == 11


def test_clipping_bounds_every_data_prediction() -> None:
    def wild(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -3 * x

    # PLMS steps with a combination of earlier calls' eps, and EDICT and BDIA move one state
    # with the eps of another (or mix in an earlier state), which clipping each call's x0
    # does not bound; every other solver's step uses the clipped predictions themselves.
    for solver in [s for s in ODE_SOLVERS if s not in ("plms", *EXACT_SOLVERS)]:
        x0, traj = ddim.sample(
            wild, torch.randn(2, 16, dtype=F64), SCHED, steps=10, solver=solver,
            clip_denoised=True, final_step="denoise", return_trajectory=True,
        )  # fmt: skip
        assert max(float(d.abs().max()) for d in traj.x0_preds) <= 1, solver
        assert x0.abs().max() <= 1, solver


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"solver": "euler"}, "unknown solver 'euler'; choose one of ddim, dpmpp-2m"),
        ({"solver": "dpmpp-2m", "eta": 0.5}, "eta applies to solver 'ddim' only, not 'dpmpp-2m'"),
        ({"solver": "unipc", "variance": "ddpm-large"}, "variance 'ddpm-large' applies to solver"),
        ({"solver": "dpmpp-3m", "steps": 2}, "solver 'dpmpp-3m' needs at least 3 steps"),
        ({"solver": "heun", "final_step": "midpoint"}, "unknown final_step 'midpoint'"),
        ({"eta": 0.5, "final_step": "none"}, "eta needs final_step 'denoise'"),
    ],
)
def test_bad_combinations_are_named(kwargs, message) -> None:
    kwargs = {"steps": 10} | kwargs
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ddim.sample(TanhEps(), torch.randn(1, 16), SCHED, **kwargs)


@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
def test_noise_level_spacings_are_distinct_integer_timesteps(spacing) -> None:
    for steps in (1, 2, 10, 100, 500, 1000):
        ts = SCHED.timesteps(steps, spacing).tolist()
        assert len(ts) == steps == len(set(ts)) and ts == sorted(ts, reverse=True)
        assert ts[0] == 999 and (steps == 1 or ts[-1] == 0)
    assert SCHED.timesteps(1000, spacing).tolist() == list(range(999, -1, -1))


def test_logsnr_is_uniform_in_log_snr_and_karras_follows_rho_7() -> None:
    a = SCHED.alpha_bar.double()
    ts = SCHED.timesteps(10, "logsnr")
    level = 0.5 * torch.log(a[ts] / (1 - a[ts]))
    # Rounding to integer t moves each point by at most half a timestep's change of lambda.
    ideal = torch.linspace(float(level[0]), float(level[-1]), 10, dtype=F64)
    dlevel = (0.5 * torch.log(a / (1 - a))).diff().abs()
    assert ((level - ideal).abs() <= dlevel.max() / 2 + 1e-12).all()
    sig = ((1 - a) / a).sqrt()
    ramp = torch.linspace(0, 1, 10, dtype=F64)
    karras = (sig[-1] ** (1 / 7) + ramp * (sig[0] ** (1 / 7) - sig[-1] ** (1 / 7))) ** 7
    t_karras = SCHED.timesteps(10, "karras")
    nearest = [int((sig - s).abs().argmin()) for s in karras]
    assert all(abs(int(t) - n) <= 1 for t, n in zip(t_karras, nearest, strict=True))


# ---------------------------------------------------------------- ddim eval solvers


def test_steps_within_a_budget_by_hand() -> None:
    from ddim.eval.solver_curves import steps_within
    from ddim.workflows import SamplerOptions

    def steps(solver: str, calls: int, final_step: str | None = None) -> int | None:
        options = SamplerOptions(spacing="logsnr", solver=solver, final_step=final_step)
        return steps_within(SCHED, options, calls)

    assert steps("ddim", 10) == 10
    assert steps("heun", 10) == 5  # 2 * 5 - 1 = 9 calls; 6 steps would cost 11
    assert steps("plms", 10) == 9  # its first step costs 2
    assert steps("dpmpp-2m", 10, "none") == 11
    assert steps("dpmpp-3m", 2) is None
    # uniform S = 9 lays out range(0, 1000, 111): 10 timesteps, as the official code does.
    assert steps_within(SCHED, SamplerOptions(spacing="uniform"), 9) == 8


def test_oracle_point_is_the_exact_law(tmp_path) -> None:
    """The W2 of the stochastic solver from its noise responses equals a large Monte Carlo
    draw's, and the deterministic gain of ddim matches exact_gaussian.output_variance."""
    from ddim.eval.exact_gaussian import gaussian_w2, output_variance
    from ddim.eval.solver_curves import oracle_point
    from ddim.workflows import SamplerOptions

    lam = power_law_spectrum(8, 1.0)
    w2, ode = oracle_point(lam, SCHED, SamplerOptions(steps=12, spacing="uniform"))
    assert w2 == pytest.approx(gaussian_w2(output_variance(lam, SCHED, 12), lam), rel=1e-12)
    assert ode is not None and ode > 0
    options = SamplerOptions(steps=8, spacing="logsnr", solver="dpmpp-2m-sde")
    w2_sde, none = oracle_point(lam, SCHED, options)
    assert none is None
    x_T, gens = seeded_latents(range(20000), (8,), dtype=F64)
    x0 = ddim.sample(DiagonalGaussian(lam, SCHED), x_T, SCHED, steps=8, spacing="logsnr",
                     solver="dpmpp-2m-sde", generators=gens)  # fmt: skip
    mc = gaussian_w2(x0.var(0), lam)
    assert w2_sde == pytest.approx(mc, abs=0.01)


def test_eval_solvers_command(tmp_path, write_checkpoint, tiny_config) -> None:
    import json

    from click.testing import CliRunner

    from ddim.cli.eval import eval_group
    from ddim.eval.solver_curves import oracle_point
    from ddim.formats.images import save_npz
    from ddim.models.unet import UNet
    from ddim.workflows import SamplerOptions

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    write_checkpoint(ckpt, UNet(tiny_config).state_dict(), ddim.NoiseSchedule.linear(1000))
    ref = tmp_path / "ref.npz"
    shape = (tiny_config.in_channels, tiny_config.image_size, tiny_config.image_size)
    save_npz(ref, torch.rand(6, *shape, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    result = CliRunner().invoke(eval_group, [
        "solvers", "--ckpt", str(ckpt), "--solvers", "ddim,dpmpp-2m", "--calls", "4,8",
        "--dim", "16", "--fd-calls", "4", "--ddim-calls", "4", "-n", "3", "--features",
        "pixels", "--ref-data", str(ref), "--out-dir", str(tmp_path),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "solvers-oracle.json").read_text())
    point = next(p for p in doc["points"] if p["solver"] == "dpmpp-2m" and p["calls"] == 8)
    options = SamplerOptions(steps=8, spacing="logsnr", solver="dpmpp-2m")
    assert point["value"] == oracle_point(power_law_spectrum(16, 1.0), SCHED, options)[0]
    fd = json.loads((tmp_path / "solvers-fd.json").read_text())
    assert {(p["solver"], p["calls"]) for p in fd["points"]} == {("ddim", 4), ("dpmpp-2m", 4)}
    assert "| dpmpp-2m |" in (tmp_path / "solvers-fd.md").read_text()
    only = CliRunner().invoke(eval_group, [
        "solvers", "--ckpt", str(ckpt), "--solvers", "dpmpp-2m", "--calls", "4", "--dim", "16",
        "--fd-calls", "4", "--ddim-calls", "8", "-n", "3", "--features", "pixels",
        "--ref-data", str(ref), "--out-dir", str(tmp_path / "only"),
    ])  # fmt: skip
    assert only.exit_code == 0, only.output
    header = (tmp_path / "only" / "solvers-fd.md").read_text().splitlines()[2]
    assert header == "| solver (FD) | 4 calls |"  # no column for the budgets of ddim, not run
    bad = CliRunner().invoke(eval_group, ["solvers", "--solvers", "ddim,euler"])
    assert bad.exit_code == 2 and "solvers are ddim, dpmpp-2m" in bad.output


def test_every_solver_declares_its_facts_once_under_its_name() -> None:
    """``ddim.names.SOLVERS`` (what --help offers without torch) and the facts beside each
    function name the same solvers in the same order; the facts are those of the papers."""
    from ddim.solvers import FACTS, solver_facts

    assert tuple(FACTS) == SOLVERS
    assert {name: f.min_steps for name, f in FACTS.items()} == {
        "ddim": 1, "dpmpp-2m": 2, "dpmpp-3m": 3, "unipc": 2, "plms": 2, "heun": 2,
        "dpmpp-2m-sde": 2, "edict": 1, "bdia": 1,
    }  # fmt: skip
    noisy = {name for name, f in FACTS.items() if f.draws_noise(0.0, "ddim")}
    assert noisy == {"dpmpp-2m-sde"}
    assert FACTS["ddim"].draws_noise(0.5, "ddim") and FACTS["ddim"].draws_noise(0.0, "ddpm-large")
    with pytest.raises(ValueError, match="unknown solver 'euler'; choose one of ddim, dpmpp-2m"):
        solver_facts("euler")
