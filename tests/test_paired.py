"""The paired comparison of :mod:`ddim.eval.paired` against differences and standard
deviations worked out by hand, and ``ddim eval judge --baseline`` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ddim.eval.judges import judge
from ddim.eval.metrics import FeatureStats
from ddim.eval.paired import compare, values


def test_a_shift_of_the_mean_moves_fd_by_a_known_amount_with_a_known_spread() -> None:
    """b = a + c e_1: the covariances are equal, so FD(b) - FD(a) = |m_a + c e_1 - m_r|^2 -
    |m_a - m_r|^2 = 2 c (m_a1 - m_r1) + c^2, on every bootstrap draw too; its spread is that of
    2 c times the mean of the first coordinate, 2 |c| s / sqrt(n)."""
    rng = np.random.default_rng(0)
    n, c = 2000, 0.3
    a = {"pca": rng.normal(size=(n, 4))}
    b = {"pca": a["pca"] + np.array([c, 0, 0, 0])}
    reference = {"pca": rng.normal(0.1, 1.0, size=(3000, 4))}
    diff = compare(a, b, reference, ["fd-pca"], boots=400)["fd-pca"]
    m_a, m_r = a["pca"][:, 0].mean(), reference["pca"][:, 0].mean()
    assert diff.value == pytest.approx(2 * c * (m_a - m_r) + c * c, abs=1e-9)
    half = 1.96 * 2 * c * a["pca"][:, 0].std(ddof=1) / math.sqrt(n)
    assert (diff.high - diff.low) / 2 == pytest.approx(half, rel=0.12)


def test_pairing_sees_a_small_change_that_the_separate_intervals_cannot() -> None:
    rng = np.random.default_rng(2)
    a = {"pca": rng.normal(size=(1000, 4))}
    b = {"pca": 1.05 * a["pca"] + 0.02 * rng.normal(size=(1000, 4))}
    reference = {"pca": rng.normal(size=(3000, 4))}
    diff = compare(a, b, reference, ["fd-pca"])["fd-pca"]
    apart = [judge(x, reference, ["fd-pca"])["fd-pca"] for x in (a, b)]
    assert apart[0].high > apart[1].low  # the separate intervals overlap
    assert diff.low > 0  # the paired one sees b further off


def test_recognizability_differs_by_the_share_of_flips_with_a_binomial_spread() -> None:
    """b loses m of a's recognizable samples: the difference is -m/n on each draw's counts,
    and its bootstrap spread that of a share p = m/n, sqrt(p (1 - p) / n)."""
    n, m = 1000, 40
    sure = np.full((n, 10), 0.01)
    sure[:, 0] = 0.91
    unsure = sure.copy()
    unsure[:m, 0] = 0.5
    diff = compare({"probs": sure}, {"probs": unsure}, {}, ["recognizable"], boots=400)
    p = m / n
    assert diff["recognizable"].value == pytest.approx(-p)
    half = (diff["recognizable"].high - diff["recognizable"].low) / 2
    assert half == pytest.approx(1.96 * math.sqrt(p * (1 - p) / n), rel=0.12)


def test_a_set_against_itself_differs_by_nothing_and_values_match_the_judges() -> None:
    rng = np.random.default_rng(1)
    x = {"mnist": rng.normal(size=(60, 8)), "probs": rng.dirichlet(np.ones(10) * 0.1, 60)}
    reference = {"mnist": rng.normal(0.2, 1, size=(80, 8))}
    judges = ["fd-mnist", "kid-mnist", "precision", "recall", "recognizable"]
    same = compare(x, x, reference, judges, boots=20)
    assert all(s.value == s.low == s.high == 0 for s in same.values())
    scored, direct = values(x, reference, judges, {}), judge(x, reference, judges)
    assert scored["fd-mnist"] == pytest.approx(
        FeatureStats.from_features(x["mnist"]).frechet_distance(
            FeatureStats.from_features(reference["mnist"])
        )
    )
    for name in judges:
        assert scored[name] == pytest.approx(direct[name].value, abs=1e-3)  # shares: n rounded
    with pytest.raises(ValueError, match="the same number of samples, got \\[59, 60\\]"):
        compare(x, {k: v[1:] for k, v in x.items()}, reference, ["fd-mnist"])


def test_ddim_eval_judge_baseline_prints_paired_differences(tmp_path) -> None:
    from sklearn.datasets import load_digits
    from test_cli import ok

    from ddim.formats.images import to_uint8

    x = torch.from_numpy(load_digits().images).float()[:, None] / 16 * 2 - 1
    x = torch.nn.functional.interpolate(x[:500], size=(28, 28), mode="bilinear")
    np.savez(tmp_path / "ref.npz", x=to_uint8(x[:400])[..., 0])
    np.savez(tmp_path / "base.npz", x=to_uint8(x[400:])[..., 0])
    np.savez(tmp_path / "dim.npz", x=to_uint8(x[400:] * 0.8)[..., 0])
    out = ok("eval", "judge", tmp_path / "base.npz", tmp_path / "dim.npz", "--ref-data",
             tmp_path / "ref.npz", "--ref-slice", "300:400", "--train-slice", "0:300",
             "--floor-draws", 0, "--judges", "fd-pca,recognizable", "--baseline",
             tmp_path / "base.npz", "--out", tmp_path / "j.md")  # fmt: skip
    assert "| difference | fd-pca | recognizable |" in out.output
    rows = json.loads((tmp_path / "j-paired.json").read_text())
    assert list(rows) == ["dim − base"]
    plain = json.loads((tmp_path / "j.json").read_text())
    expected = plain["dim (100)"]["fd-pca"]["value"] - plain["base (100)"]["fd-pca"]["value"]
    assert rows["dim − base"]["fd-pca"]["value"] == pytest.approx(expected)
    assert rows["dim − base"]["fd-pca"]["low"] > 0  # dimmer digits are further off
    assert "| dim − base | **" in out.output
