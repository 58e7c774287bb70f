"""The judges of :mod:`ddim.eval.judges` against exact and hand-computed values, and against
torchmetrics on the same features."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ddim.eval.judges import JUDGES, Spaces, cubic_kernel, fd_interval, floor, judge, kid, wilson
from ddim.eval.metrics import FeatureStats, frechet_distance


def test_fd_of_two_gaussians_is_exact_and_agrees_with_torchmetrics() -> None:
    """Commuting covariances R diag(a) R^T and R diag(b) R^T: FD = |mu1 - mu2|^2 +
    sum (sqrt a - sqrt b)^2, by hand; torchmetrics' FID on the same moments agrees."""
    rng = np.random.default_rng(0)
    rot, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = np.array([1.0, 2, 3, 4, 5, 6]), np.array([4.0, 1, 9, 1, 0.25, 6])
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rot @ np.diag(a) @ rot.T, rot @ np.diag(b) @ rot.T
    exact = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-10)
    fid = pytest.importorskip("torchmetrics.image.fid")
    theirs = fid._compute_fid(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2)))
    assert float(theirs) == pytest.approx(exact, rel=1e-8)


def test_fd_interval_holds_the_value_and_narrows_with_n() -> None:
    rng = np.random.default_rng(1)
    reference = FeatureStats.from_features(rng.normal(size=(4000, 4)))
    small = fd_interval(rng.normal(0.5, 1, size=(200, 4)), reference, boots=100)
    large = fd_interval(rng.normal(0.5, 1, size=(3200, 4)), reference, boots=100)
    for iv in (small, large):
        assert iv.low < iv.value < iv.high
    assert large.high - large.low < 0.5 * (small.high - small.low)
    assert large.low < 4 * 0.25 < large.high  # the true FD: |mu|^2 = 4 x 0.5^2


def test_wilson_interval_by_hand() -> None:
    """8 of 10: centre (0.8 + z^2/20) / (1 + z^2/10), z = 1.96; worked out: 0.4902, 0.9433."""
    iv = wilson(8, 10)
    assert iv.value == 0.8
    assert (iv.low, iv.high) == (pytest.approx(0.49016, abs=1e-5), pytest.approx(0.94332, abs=1e-5))


SUPPORT_X = np.array([[0.0, 1, 2], [1, 0, 0], [2, 2, 1], [0, 3, 1]])
SUPPORT_Y = np.array([[1.0, 1, 2], [1, 1, 0], [3, 2, 1], [0, 2, 2]])


def true_mmd2() -> float:
    """The squared MMD of the uniform laws on SUPPORT_X and SUPPORT_Y: every pair of
    support points counted, so the expectation is exact."""
    pairs = [(SUPPORT_X, SUPPORT_X), (SUPPORT_Y, SUPPORT_Y), (SUPPORT_X, SUPPORT_Y)]
    kxx, kyy, kxy = (cubic_kernel(p, q).mean() for p, q in pairs)
    return float(kxx + kyy - 2 * kxy)


def test_kid_is_unbiased_where_the_mmd_is_known_and_its_standard_error_is_calibrated() -> None:
    rng = np.random.default_rng(2)
    n, reps = 12, 4000
    estimates, errors, biased = [], [], []
    for _ in range(reps):
        x, y = SUPPORT_X[rng.integers(0, 4, n)], SUPPORT_Y[rng.integers(0, 4, n)]
        iv = kid(x, y)
        estimates.append(iv.value)
        errors.append((iv.high - iv.value) / 1.96)
        biased.append(cubic_kernel(x, x).mean() + cubic_kernel(y, y).mean()
                      - 2 * cubic_kernel(x, y).mean())  # fmt: skip
    truth, spread = true_mmd2(), np.std(estimates)
    assert abs(np.mean(estimates) - truth) < 4 * spread / math.sqrt(reps)  # unbiased
    assert abs(np.mean(biased) - truth) > 10 * spread / math.sqrt(reps)  # the V-statistic is not
    assert np.mean(errors) == pytest.approx(spread, rel=0.2)


def test_kid_matches_torchmetrics_on_the_whole_set() -> None:
    kid_module = pytest.importorskip("torchmetrics.image.kid")
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(60, 8)), rng.normal(0.3, 1, size=(60, 8))  # it takes equal sizes
    theirs = kid_module.poly_mmd(torch.from_numpy(y), torch.from_numpy(x), degree=3, coef=1.0)
    assert kid(x, y).value == pytest.approx(float(theirs), rel=1e-10)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """sklearn's 8x8 digits scaled up to 28x28 in [-1, 1]: images the judges can read."""
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images).float()[:, None] / 16 * 2 - 1
    return torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear")


def test_every_judge_scores_images_and_a_set_against_itself_is_perfect(digits) -> None:
    spaces = Spaces.build(digits[:1000])
    reference = spaces.features(digits[1000:1400])
    same = judge(reference, reference)
    assert list(same) == list(JUDGES)
    for space in ("fd-mnist", "fd-mlp", "fd-pca"):
        assert abs(same[space].value) < 1e-4  # zero up to the matrix square root's rounding
    assert same["precision"].value == same["recall"].value == 1.0
    noise = spaces.features(torch.rand(400, 1, 28, 28) * 2 - 1)
    bad = judge(noise, reference)
    assert bad["fd-pca"].low > same["fd-pca"].high and bad["kid-mnist"].low > 0
    assert bad["precision"].value < 0.1 and bad["recognizable"].value < same["recognizable"].value
    lowest = floor(digits[:1000], 100, reference, spaces.features, ["fd-pca", "recall"], draws=3)
    assert lowest["fd-pca"].low <= lowest["fd-pca"].value <= lowest["fd-pca"].high
    assert lowest["fd-pca"].high < bad["fd-pca"].low


def test_ddim_eval_judge_prints_every_judge_with_intervals_and_the_floor(digits, tmp_path) -> None:
    from test_cli import ok

    from ddim.formats.images import to_uint8

    np.savez(tmp_path / "ref.npz", x=to_uint8(digits[:1300])[..., 0])
    np.savez(tmp_path / "cell.npz", x=to_uint8(digits[1300:1500])[..., 0])
    out = ok("eval", "judge", tmp_path / "cell.npz", "--ref-data", tmp_path / "ref.npz",
             "--ref-slice", "1000:1300", "--train-slice", "0:1000", "--floor-draws", 2,
             "--out", tmp_path / "judges.md")  # fmt: skip
    assert "| samples | fd-mnist | fd-mlp | fd-pca | kid-mnist | precision |" in out.output
    rows = json.loads((tmp_path / "judges.json").read_text())
    assert list(rows) == ["real images (200, 2 draws: mean [min, max])", "cell (200)"]
    for scores in rows.values():
        assert all(s["low"] <= s["value"] <= s["high"] for s in scores.values())


def test_the_second_judge_is_a_feature_space_of_every_fd_command(digits) -> None:
    from ddim.eval.metrics import feature_extractor
    from ddim.models.classifier import MnistMLP, load_classifier

    mlp = load_classifier("mlp")
    assert isinstance(mlp, MnistMLP) and not any(
        isinstance(m, torch.nn.Conv2d) for m in mlp.modules()
    )  # another architecture than the CNN
    first, second = feature_extractor("mnist")(digits[:50]), feature_extractor("mlp")(digits[:50])
    assert first.shape == second.shape == (50, 128)
    assert torch.equal(second, mlp.features(digits[:50]))
