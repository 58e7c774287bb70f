"""EDICT and BDIA: encodings that invert exactly. In float64 on the exact oracles an encoded
image decodes to itself to rounding, guided or not, and DDIB's round trip is the identity;
as samplers from noise they converge to the data law (exact W2^2 on a Gaussian); a latent
belongs to its own solver, and the coupling parameters keep to their range."""

from __future__ import annotations

import math

import pytest
import torch

import ddim
from ddim.edit import translate
from ddim.eval.exact_gaussian import DiagonalGaussian, power_law_spectrum
from ddim.latent import CoupledLatent
from ddim.models.class_oracle import ClassMixture
from ddim.noise import seeded_latents
from ddim.solvers.exact import edict_p_for

F64 = torch.float64
SCHED = ddim.NoiseSchedule.linear()
MEANS = torch.tensor([[1.5, -0.5, 0.0], [-1.0, 1.0, 0.5], [0.0, -1.5, -1.0]], dtype=F64)
ORACLE = ClassMixture(MEANS, 0.3, torch.tensor([0.5, 0.3, 0.2], dtype=F64), SCHED)
X0 = ORACLE.marginal.sample(64, torch.Generator().manual_seed(0))
Y = torch.arange(64) % 3


def round_trip(solver: str, steps: int, **guide: object) -> float:
    latent = ddim.invert(ORACLE, X0, SCHED, steps=steps, solver=solver, **guide)
    assert isinstance(latent, CoupledLatent) and latent.solver == solver
    back = ddim.sample(ORACLE, latent, SCHED, steps=steps, solver=solver, **guide)
    return (back - X0).abs().max().item()


#: The round trip's bound under guidance: rounding where eps is steep (where the classes'
#: laws meet) is amplified on the way back, most by EDICT at S = 10 (1e-11 covers it).
GUIDED = {"edict": 1e-11, "bdia": 1e-12}


@pytest.mark.parametrize("steps", [5, 10, 50])
@pytest.mark.parametrize("solver", ["edict", "bdia"])
def test_encode_then_decode_is_the_identity_to_rounding(solver, steps) -> None:
    """Unguided (the mixture) to 1e-12, and under the exact classifier at s = 1 (Bayes: the
    class's own law; EDICT at S = 10: 2.9e-12 at worst over 64 points); DDIM's encoding
    misses by 0.3 at S = 10."""
    assert round_trip(solver, steps) <= 1e-12
    assert round_trip(solver, steps, y=Y, classifier=ORACLE.classifier) <= GUIDED[solver]
    if steps == 10:
        plain = ddim.invert(ORACLE.marginal, X0, SCHED, steps=10)
        assert (ddim.sample(ORACLE.marginal, plain, SCHED, steps=10) - X0).abs().max() > 0.1


@pytest.mark.parametrize("steps", [5, 10, 50])
@pytest.mark.parametrize("solver", ["edict", "bdia"])
def test_classifier_free_guidance_at_w_3_inverts_too(solver, steps) -> None:
    """Measured at S = 10: EDICT 4.8e-12 at worst over 64 points (median 1.2e-12; p = 0.9
    gives 2.7e-12), BDIA 3.7e-14."""
    assert round_trip(solver, steps, y=Y, guidance=3.0) <= GUIDED[solver]


@pytest.mark.parametrize("solver", ["edict", "bdia"])
def test_ddib_encodes_exactly_under_one_class_and_decodes_under_another(solver) -> None:
    """Translation with an exact solver: decoding the latent under the source class gives the
    points back to rounding, under the target class it moves them to that class's region, and
    translating the decoder's whole end state back (a -> b -> a) returns the points to
    rounding. From the image alone (half the end state) the way back is not exact."""
    x_a = ORACLE.sample(torch.zeros(8, dtype=torch.long), torch.Generator().manual_seed(1))
    run = {"steps": 20, "solver": solver, "guidance": 2.0}
    zeros, ones = torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)
    latent = ddim.invert(ORACLE, x_a, SCHED, y=zeros, **run)
    assert (ddim.sample(ORACLE, latent, SCHED, y=zeros, **run) - x_a).abs().max() < 1e-11
    x_b = translate(ORACLE, x_a, SCHED, source=0, target=1, **run)
    assert torch.equal(x_b, ddim.sample(ORACLE, latent, SCHED, y=ones, **run))
    to_b = (x_b - MEANS[1]).norm(dim=1).mean()
    assert to_b < (x_b - MEANS[0]).norm(dim=1).mean()
    state = translate(ORACLE, x_a, SCHED, source=0, target=1, return_state=True, **run)
    assert isinstance(state, CoupledLatent) and torch.equal(state.first, x_b)
    back = translate(ORACLE, state, SCHED, source=1, target=0, **run)
    assert (back - x_a).abs().max() < 1e-11
    half = translate(ORACLE, x_b, SCHED, source=1, target=0, **run)
    assert (half - x_a).abs().max() > 1e-3
    with pytest.raises(ValueError, match="return_state is for the exact solvers"):
        ddim.sample(ORACLE, x_a, SCHED, steps=5, return_state=True)


def w2_of(solver: str, steps: int, **kwargs: object) -> float:
    """The exact W2^2 of a deterministic linear sampler's output law to N(0, diag(lambda)):
    its gains on unit inputs (every map here is diagonal) against sqrt(lambda)."""
    lam = power_law_spectrum(64)
    eye = torch.eye(64, dtype=F64)
    gain = ddim.sample(DiagonalGaussian(lam, SCHED), eye, SCHED, steps=steps, solver=solver,
                       **kwargs).diag()  # fmt: skip
    return ((gain.abs() - lam.sqrt()) ** 2).sum().item()


def test_as_samplers_from_noise_they_converge_to_the_data_law() -> None:
    """Uniform spacing, D = 64, lambda_k = 1/k. BDIA (gamma = 1) converges at second order
    (W2^2 falls 16x a doubling from S = 40; DDIM 4x) and beats DDIM from S = 40 (equal at 20;
    behind at 10: 1.81 against 0.59); EDICT is far off at few steps (W2^2 35 at S = 10, DDIM
    0.59). Past 50 steps EDICT's default p rises towards 1 to bound its inverse, and that
    costs it as a sampler: at S = 160, 0.027 where p = 0.93 gives 7.9e-4 (DDIM 0.0038).
    Values pinned to 1e-3 (docs/results/exact-inversion.md)."""
    steps = (10, 20, 40, 80, 160)
    ddim_w2 = [w2_of("ddim", s) for s in steps]
    bdia_w2 = [w2_of("bdia", s) for s in steps]
    edict_w2 = [w2_of("edict", s) for s in steps]
    paper_p_w2 = [w2_of("edict", s, edict_p=0.93) for s in steps[3:]]
    assert ddim_w2 == pytest.approx([0.58935, 0.19703, 0.056603, 0.014298, 0.0038437], rel=1e-3)
    assert bdia_w2 == pytest.approx([1.8077, 0.19881, 0.015927, 9.9407e-4, 5.7751e-5], rel=1e-3)
    assert edict_w2 == pytest.approx([35.519, 2.5262, 0.52166, 0.087335, 0.026811], rel=1e-3)
    assert paper_p_w2 == pytest.approx([0.013748, 7.8599e-4], rel=1e-3)
    assert all(b < d for b, d in zip(bdia_w2[2:], ddim_w2[2:], strict=True))
    assert bdia_w2[2] / bdia_w2[3] > 12 and bdia_w2[3] / bdia_w2[4] > 12
    assert edict_w2[0] > 50 * ddim_w2[0] and paper_p_w2[1] < ddim_w2[4] < edict_w2[4]


def test_edicts_default_p_keeps_the_papers_expansion_and_a_larger_one_is_refused() -> None:
    """p defaults to 0.93 up to 50 steps and to 0.93^(50/S) beyond (so p^(-2S) stays
    0.93^(-100) = 1.4e3); encoding refuses a p whose p^(-2S) passes 1e7 and names the
    range, 1e7^(-1/(2S)) to 1 (worked by hand: S = 200 gives 0.96051, so 0.9606)."""
    assert [edict_p_for(s) for s in (1, 10, 50)] == [0.93] * 3
    assert edict_p_for(100) == pytest.approx(0.93**0.5, rel=1e-15)
    assert edict_p_for(1000) ** -2000 == pytest.approx(0.93**-100, rel=1e-12)
    x_T, _ = seeded_latents(range(3), (3,), dtype=F64)
    torch.testing.assert_close(
        ddim.sample(ORACLE.marginal, x_T, SCHED, steps=100, solver="edict"),
        ddim.sample(ORACLE.marginal, x_T, SCHED, steps=100, solver="edict", edict_p=0.93**0.5),
        rtol=0,
        atol=0,
    )
    latent = ddim.invert(ORACLE.marginal, X0[:2], SCHED, steps=200, solver="edict")
    back = ddim.sample(ORACLE.marginal, latent, SCHED, steps=200, solver="edict")
    torch.testing.assert_close(back, X0[:2], rtol=0, atol=1e-12)
    with pytest.raises(
        ValueError,
        match=r"^edict_p 0.93 cannot encode over 200 steps: the "
        r"inverse expands x - y by p\^\(-2S\) = 4.0e\+12 \(at most 1e\+07\); "
        r"take edict_p in \[0.9606, 1\], or leave it unset \(0.98202\)$",
    ):
        ddim.invert(ORACLE.marginal, X0[:2], SCHED, steps=200, solver="edict", edict_p=0.93)
    ddim.invert(ORACLE.marginal, X0[:2], SCHED, steps=200, solver="edict", edict_p=0.9606)


def test_a_latent_belongs_to_its_solver_and_the_couplings_to_their_range() -> None:
    latent = ddim.invert(ORACLE.marginal, X0[:2], SCHED, steps=5, solver="edict")
    with pytest.raises(ValueError, match="this state is edict's; sample or encode it with solver "
                                         "'edict', not 'ddim'"):  # fmt: skip
        ddim.sample(ORACLE.marginal, latent, SCHED, steps=5)
    with pytest.raises(ValueError, match="not 'bdia'"):
        ddim.sample(ORACLE.marginal, latent, SCHED, steps=5, solver="bdia")
    for name, value in (("edict_p", 0.0), ("edict_p", 1.5), ("bdia_gamma", -0.1)):
        solver = name.split("_")[0]
        with pytest.raises(ValueError, match=rf"{name} must be a finite number > 0 and <= 1, "
                                             rf"got {value}"):  # fmt: skip
            ddim.SamplerOptions(solver=solver, **{name: value})
    with pytest.raises(ValueError, match="edict_p applies to solver 'edict' only, not 'ddim'"):
        ddim.SamplerOptions(edict_p=0.9)
    with pytest.raises(ValueError, match="final_step 'denoise', not 'trapezoid'"):
        ddim.SamplerOptions(solver="bdia", final_step="trapezoid")


def test_model_calls_and_a_plain_start() -> None:
    """EDICT calls the model twice a step, BDIA once; from a plain x_T, EDICT starts with
    x = y = x_T and BDIA with DDIM's first step (so one BDIA step is DDIM's)."""
    assert ddim.model_calls(SCHED, 10, solver="edict") == 20
    assert ddim.model_calls(SCHED, 10, solver="bdia") == 10
    x_T, _ = seeded_latents(range(4), (3,), dtype=F64)
    one = ddim.sample(ORACLE.marginal, x_T, SCHED, steps=1, solver="bdia")
    torch.testing.assert_close(one, ddim.sample(ORACLE.marginal, x_T, SCHED, steps=1),
                               rtol=0, atol=1e-14)  # fmt: skip


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_a_coupled_latent_saves_and_loads_with_its_solver(tmp_path, suffix) -> None:
    """Both halves and the solver travel in a latent file; in float64 the loaded latent
    decodes to the images as the one in memory does, bit for bit."""
    from ddim.formats.latents import load_latents, save_latents

    latent = ddim.invert(ORACLE.marginal, X0[:4], SCHED, steps=8, solver="bdia")
    save_latents(tmp_path / f"l{suffix}", latent, ["a", "b", "c", "d"], dtype=F64)
    loaded, sources = load_latents(tmp_path / f"l{suffix}")
    assert isinstance(loaded, CoupledLatent) and loaded.solver == "bdia" and sources[1] == "b"
    assert torch.equal(loaded.first, latent.first) and torch.equal(loaded.second, latent.second)
    plain = ddim.invert(ORACLE.marginal, X0[:4], SCHED, steps=8)
    save_latents(tmp_path / f"p{suffix}", plain, list("abcd"))
    assert isinstance(load_latents(tmp_path / f"p{suffix}")[0], torch.Tensor)


def test_interpolating_coupled_latents_half_by_half_keeps_the_ends_exact() -> None:
    """Both halves are slerped with the same weights: the first and last frames decode to
    the two images to rounding; the frames between are new points."""
    from ddim.workflows import decode, encode, interpolation_latents

    options = ddim.SamplerOptions(steps=8, solver="bdia")
    corners = encode(ORACLE.marginal, SCHED, X0[:2], options=options)
    latents = interpolation_latents(corners, 5)
    assert isinstance(latents, CoupledLatent) and latents.shape[0] == 5
    frames = decode(ORACLE.marginal, SCHED, latents, options=options)
    assert (frames[0] - X0[0]).abs().max() < 1e-12 and (frames[4] - X0[1]).abs().max() < 1e-12
    assert (frames[2] - X0[0]).abs().max() > 0.1 and (frames[2] - X0[1]).abs().max() > 0.1


@pytest.mark.slow
@pytest.mark.parametrize(("solver", "steps"), [("bdia", 10), ("edict", 50)])
def test_ddib_round_trip_on_the_bundled_conditional_model_is_float_rounding(solver, steps):
    """mnist-cond in float32 under w = 3: four 3s translated to 8s and back through the
    decoder's end state return to MSE <= 1e-7 (measured 1.3e-8 for BDIA at S = 10, 1.2e-8
    for EDICT at S = 50), and the translation moved them (MSE > 0.1 between 3s and 8s).
    EDICT at S = 10 or 20 comes back to 5.6e-6 only: its translated images leave the data
    range (max |x| = 19 at S = 10), and the way back amplifies their rounding."""
    model, sched = ddim.load_pretrained("mnist-cond")
    x_T = seeded_latents(range(4), (1, 28, 28))[0]
    x_a = ddim.sample(model, x_T, sched, steps=10, guidance=3.0, y=torch.full((4,), 3))
    run = {"steps": steps, "solver": solver, "guidance": 3.0}
    state = translate(model, x_a, sched, source=3, target=8, return_state=True, **run)
    back = translate(model, state, sched, source=8, target=3, **run)
    assert ((state.first - x_a) ** 2).mean() > 0.1
    assert ((back - x_a) ** 2).mean() <= 1e-7


def test_fixed_point_ddim_inversion_solves_each_step_where_it_converges() -> None:
    """DDIM's encoding refined by K fixed-point calls a step: at S = 50 on the mixture in
    float64 the round trip falls from 0.092 (K = 0) to 1.6e-10 (K = 30), each step's
    residual with it; at S = 10 the iteration does not converge where the modes are narrow,
    and the residual says so (0.28) instead of hiding it. Each step costs 1 + K calls."""
    calls = []

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(int(t[0]))
        return ORACLE.marginal(x, t)

    def round_trip(steps: int, k: int) -> tuple[float, float]:
        res = []
        latent = ddim.invert(counted, X0, SCHED, steps=steps, fixed_point=k,
                             callback=lambda s: res.append(s.residual))  # fmt: skip
        back = ddim.sample(ORACLE.marginal, latent, SCHED, steps=steps)
        return (back - X0).abs().max().item(), max(res) if k else math.nan

    assert round_trip(50, 0)[0] > 0.05
    calls.clear()
    error, residual = round_trip(50, 30)
    assert error < 1e-9 and residual < 1e-9 and len(calls) == 50 * 31
    assert round_trip(10, 30)[1] > 0.1
    with pytest.raises(ValueError, match="fixed_point applies to DDIM's encoding"):
        ddim.invert(ORACLE, X0, SCHED, steps=10, solver="bdia", fixed_point=3)
    with pytest.raises(ValueError, match=r"fixed_point must be a whole number >= 0 and <= 100"):
        ddim.invert(ORACLE, X0, SCHED, steps=10, fixed_point=-1)
