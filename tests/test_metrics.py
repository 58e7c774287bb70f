"""Fréchet distance, feature statistics, the MNIST classifier and label agreement."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg

from ddim.eval import metrics
from ddim.eval.metrics import FeatureStats, cached_stats, consistency, frechet_distance
from ddim.formats.archives import load_mnist_labels
from ddim.models import classifier
from ddim.models.classifier import load_classifier
from ddim.train.classifier import accuracy, random_shift

MNIST_DIR = Path("/work/shared/data/mnist")


def scipy_fd(mu1, s1, mu2, s2) -> float:
    """The textbook formula: |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))."""
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_stats(rng: np.random.Generator, d: int, n: int) -> FeatureStats:
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)
    return FeatureStats.from_features(x)


def test_frechet_matches_scipy_sqrtm_formula():
    rng = np.random.default_rng(0)
    a, b = random_stats(rng, 16, 200), random_stats(rng, 16, 300)
    ours = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert ours == pytest.approx(scipy_fd(a.mu, a.sigma, b.mu, b.sigma), abs=1e-6)
    assert ours == pytest.approx(a.frechet_distance(b), rel=0, abs=0)
    # symmetric, zero on itself, and > 0 between these two
    assert b.frechet_distance(a) == pytest.approx(ours, abs=1e-9)
    assert a.frechet_distance(a) == pytest.approx(0.0, abs=1e-9)
    assert ours > 1.0


def test_frechet_is_stable_for_rank_deficient_covariances():
    """Fewer samples than dimensions: singular covariances, tiny negative eigenvalues."""
    rng = np.random.default_rng(1)
    a, b = random_stats(rng, 64, 20), random_stats(rng, 64, 30)
    assert np.linalg.eigvalsh(a.sigma).min() < 1e-9  # rank 19 of 64
    ours = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert np.isfinite(ours)
    assert ours == pytest.approx(scipy_fd(a.mu, a.sigma, b.mu, b.sigma), rel=1e-6)


def test_frechet_of_gaussians_closed_form():
    """Commuting (diagonal) covariances: d^2 = |dmu|^2 + sum (sqrt(s1) - sqrt(s2))^2."""
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 4 + (1 - 3) ** 2 + (2 - 1) ** 2
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one D"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_stats_match_numpy_and_merge_exactly():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((101, 5)) * 3 + 7
    whole = FeatureStats.from_features(torch.from_numpy(x))
    np.testing.assert_allclose(whole.mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(whole.sigma, np.cov(x, rowvar=False), rtol=1e-12)
    merged = FeatureStats.from_features(x[:1])
    for lo, hi in [(1, 40), (40, 41), (41, 101)]:
        merged = merged.merge(FeatureStats.from_features(x[lo:hi]))
    assert merged.n == 101
    np.testing.assert_allclose(merged.mu, whole.mu, rtol=1e-12)
    np.testing.assert_allclose(merged.sigma, whole.sigma, rtol=1e-10)
    empty = FeatureStats.from_features(np.zeros((0, 5)))
    assert empty.merge(whole) is whole and whole.merge(empty) is whole


def test_stats_save_load_and_cache(tmp_path):
    rng = np.random.default_rng(3)
    stats = random_stats(rng, 4, 50)
    stats.save(tmp_path / "s.npz", key="abc")
    back = FeatureStats.load(tmp_path / "s.npz", key="abc")
    assert back.n == 50
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    with pytest.raises(ValueError, match="are for 'abc', not 'xyz'"):
        FeatureStats.load(tmp_path / "s.npz", key="xyz")
    with pytest.raises(ValueError, match="cannot read feature statistics"):
        FeatureStats.load(tmp_path / "missing.npz")

    calls = []

    def compute() -> FeatureStats:
        calls.append(1)
        return stats

    for _ in range(2):
        got = cached_stats("mnist t10k/0:9000", compute, tmp_path / "cache")
        np.testing.assert_array_equal(got.sigma, stats.sigma)
    assert len(calls) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["mnist_t10k_0_9000.npz"]


def test_dataset_stats_batches_agree(tmp_path):
    x = torch.randn(37, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = metrics.dataset_stats(metrics.pixel_features, x, batch_size=5)
    b = FeatureStats.from_features(x.reshape(37, -1))
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=1e-10)
    assert a.n == 37


def test_consistency():
    assert consistency(torch.tensor([1, 2, 3, 4]), [1, 2, 0, 4]) == 0.75
    with pytest.raises(ValueError, match="equal, non-empty"):
        consistency([1, 2], [1])


def test_feature_extractor_names():
    assert metrics.feature_extractor("pixels") is metrics.pixel_features
    with pytest.raises(ValueError, match="unknown features 'vgg'"):
        metrics.feature_extractor("vgg")


def test_inception_without_the_extra_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_fid", None)
    monkeypatch.setitem(sys.modules, "pytorch_fid.inception", None)
    with pytest.raises(RuntimeError, match=r"pip install 'ddim\[fid\]'"):
        metrics.inception_features()


def idx1(labels: list[int]) -> bytes:
    return np.array([2049, len(labels)], dtype=">u4").tobytes() + bytes(labels)


def test_load_mnist_labels(tmp_path):
    (tmp_path / "l").write_bytes(idx1([3, 1, 4, 1, 5]))
    (tmp_path / "l.gz").write_bytes(gzip.compress(idx1([3, 1, 4, 1, 5])))
    assert load_mnist_labels(tmp_path / "l").tolist() == [3, 1, 4, 1, 5]
    assert load_mnist_labels(tmp_path / "l.gz").dtype == torch.int64
    (tmp_path / "bad").write_bytes(idx1([3, 1])[:-1])
    with pytest.raises(ValueError, match="has 1 labels, header says 2"):
        load_mnist_labels(tmp_path / "bad")
    (tmp_path / "img").write_bytes(np.array([2051, 0], dtype=">u4").tobytes())
    with pytest.raises(ValueError, match="magic 2051"):
        load_mnist_labels(tmp_path / "img")


def test_random_shift_translates_with_background_fill():
    x = torch.full((3, 1, 28, 28), -1.0)
    x[:, 0, 10, 12] = 1.0
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    for img in y:
        (r, c), *rest = (img[0] == 1).nonzero().tolist()
        assert not rest and abs(r - 10) <= 2 and abs(c - 12) <= 2
        assert (img == -1).sum() == 28 * 28 - 1


def test_bundled_classifier():
    info = classifier.classifier_info()
    assert info["heldout_accuracy"] >= 0.98
    model = load_classifier()
    assert sum(p.numel() for p in model.parameters()) == 278_474
    assert (
        Path(classifier.__file__).parent.parent / "assets" / classifier.ASSET
    ).stat().st_size < 2e6
    x = torch.zeros(2, 1, 28, 28)
    assert model.features(x).shape == (2, classifier.FEATURE_DIM)
    assert metrics.mnist_features()(x).shape == (2, 128)
    with pytest.raises(ValueError, match=r"needs \(B, 1, 28, 28\)"):
        model.features(torch.zeros(2, 1, 32, 32))


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="the shared MNIST files are not here")
def test_bundled_classifier_heldout_accuracy_reproduces():
    from ddim.formats.archives import load_mnist

    images = load_mnist(MNIST_DIR / "t10k-images-idx3-ubyte.gz")[9000:]
    labels = load_mnist_labels(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")[9000:]
    acc = accuracy(load_classifier(), images, labels)
    assert acc == pytest.approx(classifier.classifier_info()["heldout_accuracy"], abs=1e-9)
    assert acc >= 0.98
