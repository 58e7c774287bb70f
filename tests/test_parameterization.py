"""What a network predicts (eps, v, x): the conversions by hand, their round trip, and every
solver, guidance and the encoding reading a rewrapped exact oracle as the oracle itself."""

from __future__ import annotations

import math

import pytest
import torch

import ddim
from ddim.models.class_oracle import ClassMixture
from ddim.models.oracle import GaussianMixture
from ddim.models.unet import UNetConfig
from ddim.names import PREDICTIONS, SOLVERS
from ddim.noise import seeded_latents
from ddim.parameterization import Reparameterized, from_pair, prediction_of, to_pair

F64 = torch.float64
SCHED = ddim.NoiseSchedule.linear()


def _mixture() -> GaussianMixture:
    means = torch.tensor([[1.5, -0.5, 0.0], [-1.0, 1.0, 0.5], [0.0, -1.5, -1.0]], dtype=F64)
    return GaussianMixture(means, 0.3, torch.tensor([0.5, 0.3, 0.2], dtype=F64), SCHED)


def test_the_conversions_by_hand() -> None:
    # alpha = 0.6, sigma = 0.8: x_t = 0.6 * 2 + 0.8 * 0.5 = 1.6 for x0 = 2, eps = 0.5
    x, x0, eps = (torch.tensor([v], dtype=F64) for v in (1.6, 2.0, 0.5))
    assert from_pair(eps, x0, 0.6, 0.8, "v").item() == pytest.approx(0.6 * 0.5 - 0.8 * 2.0)
    assert from_pair(eps, x0, 0.6, 0.8, "x").item() == 2.0
    for prediction in PREDICTIONS:
        out = from_pair(eps, x0, 0.6, 0.8, prediction)
        e, d = to_pair(out, x, 0.6, 0.8, prediction)
        assert e.item() == pytest.approx(0.5, abs=1e-15)
        assert d.item() == pytest.approx(2.0, abs=1e-15)
    with pytest.raises(ValueError, match="unknown prediction 'score'; choose one of eps, v, x"):
        to_pair(eps, x, 0.6, 0.8, "score")


@pytest.mark.parametrize("prediction", ["v", "x"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_a_rewrapped_oracle_samples_as_the_oracle(solver, prediction) -> None:
    mixture = _mixture()
    wrapped = Reparameterized(mixture, SCHED, prediction)
    assert prediction_of(wrapped) == prediction and prediction_of(mixture) == "eps"
    x_T, _ = seeded_latents(range(64), mixture.shape, dtype=F64)
    kwargs = {"steps": 20, "solver": solver, "seed": 3}
    if solver == "ddim":
        kwargs["eta"] = 0.5
    want = ddim.sample(mixture, x_T, SCHED, **kwargs)
    got = ddim.sample(wrapped, x_T, SCHED, **kwargs)
    assert (got - want).abs().max().item() < 1e-12
    # the network's raw output is not eps, so reading it as eps would be far off
    t = torch.full((64,), 500)
    assert (wrapped(x_T, t) - mixture(x_T, t)).abs().max().item() > 0.1


@pytest.mark.parametrize("prediction", ["v", "x"])
def test_encoding_and_guidance_read_the_parameterization(prediction) -> None:
    means = torch.tensor([[2.0, 0.0], [-2.0, 0.5]], dtype=F64)
    oracle = ClassMixture(means, 0.4, torch.tensor([0.5, 0.5], dtype=F64), SCHED)
    wrapped = Reparameterized(oracle, SCHED, prediction)
    x0, _ = seeded_latents(range(16), (2,), dtype=F64)
    y = torch.arange(16) % 2
    for fn in (ddim.invert, ddim.sample):
        want = fn(oracle, x0, SCHED, steps=10, y=y, guidance=2.0)
        got = fn(wrapped, x0, SCHED, steps=10, y=y, guidance=2.0)
        assert (got - want).abs().max().item() < 1e-12


def test_the_config_declares_it_and_keeps_old_descriptions() -> None:
    plain = UNetConfig(ch=32, ch_mult=(1,), attn_resolutions=(), image_size=8)
    assert "prediction" not in plain.to_dict() and "sampling_plan" not in plain.to_dict()
    student = UNetConfig.from_dict({**plain.to_dict(), "prediction": "v",
                                    "sampling_plan": [999, 499]})  # fmt: skip
    assert student.to_dict()["prediction"] == "v"
    assert student.sampling_plan == (999, 499)
    with pytest.raises(ValueError, match="UNetConfig.prediction must be one of eps, v, x"):
        UNetConfig(prediction="score")
    with pytest.raises(ValueError, match="distinct timesteps >= 0, largest first"):
        UNetConfig(sampling_plan=(10, 500))


def test_v_of_a_unit_variance_point_by_hand() -> None:
    # at alpha_bar = 1/2 both coefficients are sqrt(1/2): v = (eps - x0) / sqrt(2)
    r = math.sqrt(0.5)
    out = from_pair(torch.tensor(1.0), torch.tensor(3.0), r, r, "v")
    assert out.item() == pytest.approx((1.0 - 3.0) * r)
