"""Editing with exact oracles: SDEdit (strength 1 is sampling; from data it keeps the data's
law), inpainting (its exact output law against Monte Carlo and against the exact conditional
law; known pixels kept), and DDIB class translation on two Gaussian classes."""

from __future__ import annotations

import math

import pytest
import torch

import ddim
from ddim import workflows
from ddim.edit import edit, sdedit_timesteps, translate
from ddim.eval.exact_gaussian import (
    DiagonalGaussian,
    gaussian_w2,
    output_variance,
    power_law_spectrum,
)
from ddim.eval.inpaint_exact import (
    CorrelatedGaussian,
    ar1_covariance,
    conditional_law,
    inpainting_law,
    inpainting_w2,
)
from ddim.inpaint import inpaint, inpaint_moves, repaint_moves
from ddim.models.class_oracle import ClassMixture
from ddim.names import SOLVERS
from ddim.plan import StepPlan

F64 = torch.float64
SCHED = ddim.NoiseSchedule.linear()


# ---------------------------------------------------------------- SDEdit


def test_strength_one_is_plain_sampling_with_the_same_seeds(eps_model, sched) -> None:
    x0 = torch.zeros(3, 3, 8, 8)
    for kwargs in ({"steps": 10}, {"steps": 10, "eta": 0.7}, {"steps": 6, "solver": "dpmpp-2m"}):
        ours = edit(eps_model, x0, sched, strength=1.0, seed=5, **kwargs)
        made = workflows.generate(eps_model, sched, 3, (3, 8, 8), seed=5,
                                  options=ddim.SamplerOptions(**kwargs))  # fmt: skip
        assert torch.equal(ours, made)


def test_the_plan_starts_at_t0_and_costs_strength_times_steps() -> None:
    options = ddim.SamplerOptions(steps=50)
    ts = sdedit_timesteps(SCHED, options, 0.6)
    assert ts[0] == 599 and ts[1:] == list(range(580, -1, -20))
    assert ddim.model_calls(SCHED, ts) == 31  # about 0.6 x 50
    assert sdedit_timesteps(SCHED, options, 0.001) == [0]
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="strength must lie in"):
            sdedit_timesteps(SCHED, options, bad)


def test_sdedit_of_data_keeps_the_data_law() -> None:
    """x_0 ~ N(0, diag(lam)) noised to t_0 has the exact marginal there, so the ODE from t_0
    lands on the data law up to its discretisation: the exact W2^2 (eq. 3 of exact_gaussian)
    falls with the steps, to 1.5e-4 at 1,000 (the error sits near t = 0, so it is that of
    plain sampling with as many steps, not less)."""
    lam = power_law_spectrum(64, 1.0)
    oracle = DiagonalGaussian(lam, SCHED)

    def w2(strength: float, steps: int) -> float:
        ts = sdedit_timesteps(SCHED, ddim.SamplerOptions(steps=steps), strength)
        gain = ddim.sample(oracle, torch.ones(1, 64, dtype=F64), SCHED, steps=ts)[0]
        a = SCHED.alpha_bar_at(ts[0])
        return gaussian_w2(gain**2 * (a * lam + 1 - a), lam)

    w2_plain = gaussian_w2(output_variance(lam, SCHED, 20), lam)
    assert w2(0.5, 20) == pytest.approx(0.19520, rel=1e-3) and w2(0.5, 20) < w2_plain
    assert w2(0.5, 200) < w2(0.5, 20) / 50
    assert w2(0.5, 1000) < 2e-4
    # and the real edit() draws that law: the variance of 4,000 edits of exact data draws
    ts = sdedit_timesteps(SCHED, ddim.SamplerOptions(steps=50), 0.5)
    gain = ddim.sample(oracle, torch.ones(1, 64, dtype=F64), SCHED, steps=ts)[0]
    a = SCHED.alpha_bar_at(ts[0])
    exact = gain**2 * (a * lam + 1 - a)
    x0 = lam.sqrt() * torch.randn(4000, 64, generator=torch.Generator().manual_seed(1), dtype=F64)
    out = edit(oracle, x0, SCHED, strength=0.5, steps=50, seed=2)
    z = (out.var(0) - exact) / (exact * math.sqrt(2 / 3999))
    assert z.abs().max() < 4.5, z


# ---------------------------------------------------------------- inpainting

COV = ar1_covariance(8, 0.9)
KNOWN = torch.tensor([True] * 4 + [False] * 4)
X0 = torch.linalg.cholesky(COV) @ torch.randn(8, generator=torch.Generator().manual_seed(0),
                                              dtype=F64)  # fmt: skip


def test_repaint_moves_by_hand() -> None:
    assert repaint_moves(3) == [("down", 0), ("down", 1), ("down", 2)]
    assert repaint_moves(3, 1, 2) == [
        ("down", 0), ("up", 0), ("down", 0), ("down", 1), ("up", 1), ("down", 1), ("down", 2)
    ]  # fmt: skip
    two = repaint_moves(5, 2, 2)
    assert two[:6] == [("down", 0), ("down", 1), ("up", 1), ("up", 0), ("down", 0), ("down", 1)]
    assert sum(m == "down" for m, _ in repaint_moves(20, 1, 5)) == 20 + 4 * 19
    late = repaint_moves(5, 1, 2, start=3)  # back up only after arriving at points 3 and 4
    assert late == [("down", 0), ("down", 1), ("down", 2), ("up", 2), ("down", 2), ("down", 3),
                    ("up", 3), ("down", 3), ("down", 4)]  # fmt: skip


def test_inpainting_resamples_only_below_the_given_noise_level() -> None:
    """20 uniform steps of T = 1000 visit t = 950, 900, ..., 0: t < 500 from point 10 on,
    so r = 15 over jumps of 2 resamples after arriving at 10, 12, 14, 16 and 18."""
    plan = StepPlan.build(SCHED, 20)
    moves = inpaint_moves(plan, 1000, "ddnm", jump_length=2, resample=15, resample_below=0.5)
    assert sum(m == "down" for m, _ in moves) == 20 + 5 * 14 * 2 == 160
    assert [i for m, i in moves if m == "up"][:2] == [9, 8]  # first back up from point 10
    assert moves == repaint_moves(20, 2, 15, start=10)
    assert inpaint_moves(plan, 1000, "ddnm", 2, 5, 1.0) == repaint_moves(20, 2, 5)
    assert inpaint_moves(plan, 1000, "replace", 2, 5, 0.5) == repaint_moves(20)
    assert sum(m == "down" for m, _ in inpaint_moves(plan, 1000, "ddnm")) == 160  # the default


def test_going_back_up_at_high_noise_barely_moves_the_exact_law() -> None:
    """On the Gaussian oracle, DDNM's resampling at t >= T / 2 changes W2^2 to the exact
    conditional law by under 1e-6 of it: the travel that matters is at low noise
    (docs/results/inpainting-oracle.md). Values pinned to 1e-3."""
    oracle = CorrelatedGaussian(COV, SCHED)
    walk = {"steps": 20, "method": "ddnm", "resample": 5, "jump_length": 2}
    everywhere = inpainting_w2(oracle, X0, KNOWN, **walk)
    late = inpainting_w2(oracle, X0, KNOWN, **walk, resample_below=0.5)
    assert everywhere == pytest.approx(0.03842, rel=1e-3)
    assert late == pytest.approx(everywhere, rel=1e-6)
    assert inpainting_w2(oracle, X0, KNOWN, **walk, resample_below=0.1) == pytest.approx(
        0.03299, rel=1e-3
    )


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("replace", {}),
        ("repaint", {"resample": 3, "jump_length": 1}),
        ("ddnm", {"resample": 1}),
        ("ddnm", {"resample": 3, "jump_length": 2}),
        ("ddnm", {"resample": 3, "jump_length": 2, "resample_below": 0.5}),
    ],
)
def test_the_exact_law_is_what_inpaint_draws(method, kwargs) -> None:
    """The matrix propagation of eval.inpaint_exact against 2,000 draws of inpaint itself:
    mean and variance of every unknown coordinate within 4.5 standard errors."""
    oracle = CorrelatedGaussian(COV, SCHED)
    n = 2000
    result = inpaint(oracle, X0.expand(n, 8).clone(), KNOWN, SCHED, steps=12, method=method,
                     seed=0, **kwargs)  # fmt: skip
    assert torch.equal(result.images[:, KNOWN], X0[KNOWN].expand(n, 4))  # known pixels kept
    m, c = inpainting_law(oracle, X0, KNOWN, steps=12, method=method, **kwargs)
    x = result.images[:, ~KNOWN]
    assert ((x.mean(0) - m) / (c.diag().sqrt() / math.sqrt(n))).abs().max() < 4.5
    assert ((x.var(0) - c.diag()) / (c.diag() * math.sqrt(2 / (n - 1)))).abs().max() < 4.5


def test_replacement_is_biased_and_resampling_moves_it_closer() -> None:
    """W2^2 to the exact conditional law (eq. 2): the replacement method keeps a bias that
    more steps do not remove; RePaint's resampling shrinks it (values pinned to 1e-3)."""
    oracle = CorrelatedGaussian(COV, SCHED)
    replace_100 = inpainting_w2(oracle, X0, KNOWN, steps=100, method="replace")
    repaint_100 = inpainting_w2(oracle, X0, KNOWN, steps=100, method="repaint", resample=5)
    assert replace_100 == pytest.approx(0.06134, rel=1e-3)
    assert repaint_100 == pytest.approx(0.01055, rel=1e-3)
    assert inpainting_w2(oracle, X0, KNOWN, steps=20, method="replace") > 0.04
    jumps = inpainting_w2(oracle, X0, KNOWN, steps=20, method="repaint", jump_length=5)
    assert jumps < 0.8 * inpainting_w2(oracle, X0, KNOWN, steps=20, method="replace")
    m, _ = conditional_law(COV, KNOWN, X0)  # the conditional mean continues the known half
    assert m[0] == pytest.approx(0.9 * float(X0[3]), rel=1e-9)


def test_dps_counts_its_gradient_passes_and_keeps_known_pixels() -> None:
    oracle = CorrelatedGaussian(COV, SCHED)
    out = inpaint(oracle, X0.expand(4, 8).clone(), KNOWN, SCHED, steps=10, method="dps")
    assert (out.model_calls, out.grad_passes) == (10, 10)
    assert torch.equal(out.images[:, KNOWN], X0[KNOWN].expand(4, 4))
    plain = inpaint(oracle, X0.expand(4, 8).clone(), KNOWN, SCHED, steps=10, method="replace")
    assert (plain.model_calls, plain.grad_passes) == (10, 0)


@pytest.mark.parametrize("method", ["replace", "ddnm", "dps"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_inpaints_and_keeps_the_known_pixels(solver, method) -> None:
    """Inpainting is a change of the step plan, so every solver walks it (DDNM's resampling
    included: a multistep history starts again after each trip back up)."""
    oracle = CorrelatedGaussian(COV, SCHED)
    kwargs = {"steps": 8, "solver": solver, "method": method, "resample": 2, "jump_length": 2,
              "resample_below": 1.0}  # fmt: skip
    out = inpaint(oracle, X0.expand(3, 8).clone(), KNOWN, SCHED, **kwargs)
    assert torch.equal(out.images[:, KNOWN], X0[KNOWN].expand(3, 4))
    assert torch.isfinite(out.images).all()
    walked = inpaint_moves(StepPlan.build(SCHED, 8), 1000, method, 2, 2, 1.0)
    stretch_calls = ddim.model_calls(SCHED, 8, solver=solver) - 8  # the solver's extra calls
    downs = sum(m == "down" for m, _ in walked)
    assert out.model_calls >= downs and (stretch_calls or out.model_calls == downs)
    assert out.grad_passes == (out.model_calls if method == "dps" else 0)


@pytest.mark.parametrize("method", ["repaint", "ddnm"])
@pytest.mark.parametrize("solver", ["dpmpp-2m", "dpmpp-3m"])
def test_each_stretch_of_the_walk_restarts_a_multistep_solver(solver, method) -> None:
    """RePaint's walk runs the solver over each stretch down: with jumps of 1 every stretch
    has two steps, which a multistep solver takes at first order (warm-up, then the
    lower-order final step), so the walk is DDIM's eta = 0 walk to rounding, with the state
    changes of the method between the steps; one stretch of 8 steps is not."""
    oracle = CorrelatedGaussian(COV, SCHED)
    x = X0.expand(4, 8).clone()
    walk = {"steps": 8, "method": method, "final_step": "denoise", "seed": 4, "jump_length": 1,
            "resample_below": 1.0}  # fmt: skip
    first = inpaint(oracle, x, KNOWN, SCHED, eta=0.0, resample=3, **walk).images
    ours = inpaint(oracle, x, KNOWN, SCHED, solver=solver, resample=3, **walk).images
    assert (ours - first).abs().max().item() < 1e-12
    plain = inpaint(oracle, x, KNOWN, SCHED, eta=0.0, resample=1, **walk).images
    multistep = inpaint(oracle, x, KNOWN, SCHED, solver=solver, resample=1, **walk).images
    assert (multistep - plain).abs().max().item() > 1e-3


def per_row(i: int) -> torch.Tensor:
    """The x_T that inpaint draws first for image ``i`` of ``seed = 2``."""
    return torch.randn(8, generator=torch.Generator().manual_seed(2 + i), dtype=F64)


def test_classifier_guidance_reaches_inpainting() -> None:
    """At s = 1 the mixture guided by its exact posterior is the conditional oracle, in
    inpainting as in sampling (Bayes); DDNM on the same seeds gives the same images."""
    means = torch.stack([X0, -X0])
    two = ClassMixture(means, 0.5, torch.tensor([0.5, 0.5], dtype=F64), SCHED)
    y = torch.zeros(4, dtype=torch.long)
    x = X0.expand(4, 8).clone()
    direct = inpaint(two.classes[0], x, KNOWN, SCHED, steps=10, seed=1, resample=2)
    guided = inpaint(two.marginal, x, KNOWN, SCHED, steps=10, seed=1, resample=2, y=y,
                     classifier=two.classifier, classifier_scale=1.0)  # fmt: skip
    torch.testing.assert_close(guided.images, direct.images, rtol=1e-9, atol=1e-9)
    options = ddim.SamplerOptions(steps=10, eta=1.0, classifier_scale=1.0)
    again = inpaint(two.marginal, x, KNOWN, SCHED, options=options, seed=1, resample=2, y=y,
                    classifier=two.classifier)  # fmt: skip
    assert torch.equal(again.images, guided.images)
    with pytest.raises(ValueError, match="either as options= or one by one, not both"):
        inpaint(two.marginal, x, KNOWN, SCHED, options=options, steps=5)


@pytest.mark.parametrize(
    ("mask", "kwargs", "message"),
    [
        (torch.full((8,), 0.5), {}, "the mask must be binary"),
        (torch.ones(5, dtype=torch.bool), {}, r"mask of shape \(5,\) does not fit"),
        (KNOWN, {"method": "magic"}, "unknown inpainting method 'magic'"),
        (KNOWN, {"resample": 0, "method": "repaint"}, "jump_length and resample must be >= 1"),
        (KNOWN, {"resample_below": 0.0}, r"resample_below must be in \(0, 1\], got 0.0"),
    ],
)
def test_bad_inpainting_input_is_named(mask, kwargs, message) -> None:
    oracle = CorrelatedGaussian(COV, SCHED)
    with pytest.raises(ValueError, match=message):
        inpaint(oracle, X0.expand(2, 8).clone(), mask, SCHED, steps=4, **kwargs)


# ---------------------------------------------------------------- translation (DDIB)

TWO = ClassMixture(torch.tensor([[2.0, 0.0], [-1.0, 1.5]], dtype=F64),
                   torch.tensor([0.3, 0.6], dtype=F64), torch.tensor([0.5, 0.5], dtype=F64),
                   SCHED)  # fmt: skip


def test_translation_maps_class_a_onto_class_b_and_back() -> None:
    """Between isotropic Gaussians the DDIM encode/decode is, in the limit of many steps,
    the affine map mu_b + (s_b / s_a)(x - mu_a); back again it is the identity, up to
    the reconstruction error of Table 2 (which falls with S)."""
    x_a = TWO.sample(torch.zeros(6, dtype=torch.long), torch.Generator().manual_seed(3))
    mu, s = TWO.marginal.means, TWO.marginal.stds
    expected = mu[1] + (s[1] / s[0]) * (x_a - mu[0])
    errors = []
    for steps in (50, 1000):
        x_b = translate(TWO, x_a, SCHED, source=0, target=1, steps=steps)
        back = translate(TWO, x_b, SCHED, source=1, target=0, steps=steps)
        errors.append(((x_b - expected).abs().max().item(), (back - x_a).abs().max().item()))
    assert errors[1][0] < 0.03 < 0.2 < errors[0][0]  # measured 0.023 and 0.233
    assert errors[1][1] < 0.01 and errors[1][1] < errors[0][1] / 10  # 0.006 and 0.106
    with pytest.raises(ValueError, match="translation decodes with DDIM: eta must be 0"):
        translate(TWO, x_a, SCHED, source=0, target=1, steps=10, eta=0.5)
