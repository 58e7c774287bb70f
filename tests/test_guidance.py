"""Guided sampling on an exact class-conditional oracle: classifier-free guidance at w = 1 and
classifier guidance with the exact posterior at s = 1 are conditional sampling, for every
solver; the guided ε is one batched call; bad input is named."""

from __future__ import annotations

import pytest
import torch

import ddim
from ddim.models.class_oracle import ClassMixture
from ddim.names import SOLVERS

F64 = torch.float64
SCHED = ddim.NoiseSchedule.linear()
MIX = ClassMixture(
    torch.tensor([[2.0, 0.0, -1.0], [-1.5, 1.0, 0.5], [0.0, -2.0, 1.5]], dtype=F64),
    torch.tensor([0.3, 0.5, 0.4], dtype=F64),
    torch.tensor([0.5, 0.3, 0.2], dtype=F64),
    SCHED,
)
Y = torch.tensor([0, 1, 2, 1, 0, 2])


def x_T(seed: int = 0) -> torch.Tensor:
    return torch.randn(len(Y), 3, generator=torch.Generator().manual_seed(seed), dtype=F64)


class Unconditional:
    """The mixture's unconditional eps as a plain model (no labels, no num_classes)."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return MIX.marginal(x, t)


def conditional_by_hand(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return MIX(x, t, Y)


@pytest.mark.parametrize("solver", SOLVERS)
def test_cfg_at_w_1_is_the_conditional_oracle_and_w_0_the_mixture(solver) -> None:
    kwargs = {"steps": 10, "solver": solver, "seed": 3}
    direct = ddim.sample(conditional_by_hand, x_T(), SCHED, **kwargs)
    guided = ddim.sample(MIX, x_T(), SCHED, y=Y, guidance=1.0, **kwargs)
    assert torch.equal(guided, direct)
    mixture = ddim.sample(MIX.marginal, x_T(), SCHED, **kwargs)
    assert torch.equal(ddim.sample(MIX, x_T(), SCHED, y=Y, guidance=0.0, **kwargs), mixture)


def test_cfg_is_eq_1_for_any_w_in_one_batched_call() -> None:
    rows: list[int] = []

    class Counted(ClassMixture):
        def __call__(self, x, t, y=None):
            rows.append(x.shape[0])
            return super().__call__(x, t, y)

    counted = Counted(MIX.marginal.means, MIX.marginal.stds, MIX.marginal.weights, SCHED)

    def by_hand(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e_null = MIX(x, t, torch.full_like(Y, 3))
        return e_null + 3.0 * (MIX(x, t, Y) - e_null)

    for solver in ("ddim", "dpmpp-2m", "heun"):
        rows.clear()
        ours = ddim.sample(counted, x_T(1), SCHED, steps=8, solver=solver, y=Y, guidance=3.0)
        reference = ddim.sample(by_hand, x_T(1), SCHED, steps=8, solver=solver)
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
        assert len(rows) == ddim.model_calls(SCHED, 8, solver=solver)  # one call a step
        assert set(rows) == {2 * len(Y)}  # the conditional and null halves together


@pytest.mark.parametrize(("solver", "eta"), [("ddim", 0.0), ("ddim", 1.0), ("dpmpp-2m", 0.0),
                                             ("unipc", 0.0), ("dpmpp-2m-sde", 0.0)])  # fmt: skip
def test_classifier_guidance_with_the_exact_posterior_is_conditional_sampling(solver, eta):
    """Bayes: grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t), so at s = 1 the
    unconditional oracle guided by the exact posterior is the conditional oracle."""
    kwargs = {"steps": 12, "solver": solver, "eta": eta, "seed": 5}
    direct = ddim.sample(conditional_by_hand, x_T(2), SCHED, **kwargs)
    guided = ddim.sample(
        Unconditional(), x_T(2), SCHED, y=Y, classifier=MIX.classifier, classifier_scale=1.0,
        **kwargs,
    )  # fmt: skip
    torch.testing.assert_close(guided, direct, rtol=1e-10, atol=1e-10)
    stronger = ddim.sample(
        Unconditional(), x_T(2), SCHED, y=Y, classifier=MIX.classifier, classifier_scale=4.0,
        **kwargs,
    )  # fmt: skip
    assert not torch.allclose(stronger, direct, atol=1e-3)


def test_classifier_guidance_on_a_cfg_model_adds_to_its_guided_eps() -> None:
    """eq. 2 on top of eq. 1: w = 0 (the null half) plus the exact classifier at s = 1 is
    the conditional oracle again."""
    direct = ddim.sample(conditional_by_hand, x_T(4), SCHED, steps=10)
    both = ddim.sample(MIX, x_T(4), SCHED, steps=10, y=Y, guidance=0.0, classifier=MIX.classifier)
    torch.testing.assert_close(both, direct, rtol=1e-10, atol=1e-10)


def test_invert_encodes_under_a_class() -> None:
    x0 = MIX.sample(Y, torch.Generator().manual_seed(6))
    ours = ddim.invert(MIX, x0, SCHED, steps=20, y=Y, guidance=2.0)

    def by_hand(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e_null = MIX(x, t, torch.full_like(Y, 3))
        return e_null + 2.0 * (MIX(x, t, Y) - e_null)

    reference = ddim.invert(by_hand, x0, SCHED, steps=20)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    errors = []  # encoding then decoding under the class: the error falls as 1/S
    for steps in (20, 100, 500):
        z = ddim.invert(MIX, x0, SCHED, steps=steps, y=Y, guidance=2.0)
        back = ddim.sample(MIX, z, SCHED, steps=steps, y=Y, guidance=2.0)
        errors.append(float((back - x0).abs().max()))
    assert errors[0] > 3.5 * errors[1] > 3.5**2 * errors[2] and errors[2] < 0.02, errors


def test_guided_samples_land_in_their_class() -> None:
    """With the exact oracle and many steps, CFG at w = 1 draws each class's Gaussian: the
    mean of 2,000 draws of class 1 is mu_1 within 4.5 standard errors."""
    n = 2000
    y = torch.ones(n, dtype=torch.long)
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    out = ddim.sample(MIX, x, SCHED, steps=50, solver="dpmpp-2m", y=y, guidance=1.0)
    err = (out.mean(0) - MIX.marginal.means[1]).abs()
    assert (err < 4.5 * 0.5 / n**0.5).all(), err
    assert out.std(0).sub(0.5).abs().max() < 0.05


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        (Unconditional(), {"y": Y, "guidance": 2.0}, "needs a class-conditional model"),
        (Unconditional(), {"y": Y}, "labels y need a class-conditional model"),
        (MIX, {"guidance": 2.0}, "classifier-free guidance needs labels y"),
        (MIX, {"y": Y[:4], "guidance": 2.0}, r"shape \(6,\) for a batch of 6"),
        (
            MIX,
            {"y": torch.tensor([0, 1, 2, 3, 0, 1]), "guidance": 2.0},
            r"class 3 is out of range: the model has classes 0..2",
        ),  # fmt: skip
        (MIX, {"y": Y.float(), "guidance": 2.0}, "integer tensor"),
        (MIX, {"y": Y, "guidance": -1.0}, "guidance must be a finite number >= 0"),
        (Unconditional(), {"classifier": MIX.classifier}, "classifier guidance needs labels y"),
        (Unconditional(), {"y": Y, "classifier_scale": 2.0}, "classifier_scale needs a classifier"),
        (
            Unconditional(),
            {"y": torch.tensor([0, 1, 2, 5, 0, 1]), "classifier": MIX.classifier},
            r"class 5 is out of range: the classifier has classes 0..2",
        ),  # fmt: skip
    ],
)
def test_bad_guidance_is_named(model, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ddim.sample(model, x_T(), SCHED, steps=5, **kwargs)
