"""Fréchet distance between feature statistics, the feature extractors, and label agreement.

The Fréchet (2-Wasserstein) distance between ``N(mu1, S1)`` and ``N(mu2, S2)`` is (Dowson &
Landau 1982; FID, Heusel et al. 2017, eq. 6)::

    d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})                  (1)

:func:`frechet_distance` evaluates the trace term with two symmetric eigendecompositions in
float64 (no general matrix square root, so no complex round-off), clamping the tiny negative
eigenvalues that rank-deficient covariances produce.

Features: ``"mnist"`` (the penultimate layer of the bundled
:class:`~ddim.models.classifier.MnistClassifier`: FD-MNIST), ``"mlp"`` (that of the bundled
:class:`~ddim.models.classifier.MnistMLP`, the second judge), ``"inception"`` (Inception-v3's
pool layer via the optional ``ddim[fid]`` extra: FID) and ``"pixels"`` (raw values).
"""

from __future__ import annotations

import functools
import io
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ddim import cache
from ddim.distributed import world
from ddim.formats.atomic import atomic_write_bytes
from ddim.names import FEATURES

FeatureFn = Callable[[torch.Tensor], torch.Tensor]
#: Wraps the feature function of a named cell (:meth:`ddim.eval.panel.Panel.tap`).
Tap = Callable[[str, FeatureFn], FeatureFn]
INCEPTION_DIM = 2048


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance, negative round-off eigenvalues set to 0."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """``d^2`` of eq. (1) between two Gaussians, computed in float64.

    ``tr((S1^{1/2} S2 S1^{1/2})^{1/2})`` is the sum of the square roots of the eigenvalues of
    the symmetric PSD matrix ``S1^{1/2} S2 S1^{1/2}``, which equals ``tr(sqrtm(S1 S2))``.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"Fréchet distance needs means (D,) and covariances (D, D) of one D, got "
            f"{mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
        )
    root1 = _psd_sqrt((s1 + s1.T) / 2)
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    cross = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * cross)


@dataclass(frozen=True)
class FeatureStats:
    """Mean ``mu`` (D,), unbiased covariance ``sigma`` (D, D) and count ``n`` of features.

    With ``n < 2`` the covariance is all zeros. Statistics of disjoint sets combine exactly
    with :meth:`merge`, so shards computed apart (batches, processes) give the statistics of
    the whole set.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, features: torch.Tensor | np.ndarray) -> FeatureStats:
        """Statistics of ``features`` ``(N, D)``, in float64; ``N`` may be 0."""
        f = _to_numpy(features)
        if f.ndim != 2:
            raise ValueError(f"features must have shape (N, D), got {f.shape}")
        n, d = f.shape
        mu = f.mean(axis=0) if n else np.zeros(d)
        centred = f - mu
        scatter = centred.T @ centred
        return cls(mu, scatter / (n - 1) if n > 1 else np.zeros((d, d)), n)

    @classmethod
    def of_batches(cls, batches: Iterable[torch.Tensor | np.ndarray]) -> FeatureStats:
        """The statistics of the features of all ``batches`` (each ``(N_i, D)``) together."""
        return cls.merged(cls.from_features(b) for b in batches)

    @staticmethod
    def merged(parts: Iterable[FeatureStats]) -> FeatureStats:
        """The statistics of disjoint sets together, merged one at a time in order."""
        stats = None
        for part in parts:
            stats = part if stats is None else stats.merge(part)
        if stats is None:
            raise ValueError("cannot compute feature statistics of no features")
        return stats

    def merge(self, other: FeatureStats) -> FeatureStats:
        """The statistics of the union of two disjoint sets (Chan et al. 1979).

        With ``M = (n - 1) sigma`` the centred scatter:
        ``M = M_a + M_b + n_a n_b / n (mu_b - mu_a)(mu_b - mu_a)^T``.
        """
        if self.mu.shape != other.mu.shape:
            raise ValueError(f"cannot merge {self.mu.shape[0]}-D and {other.mu.shape[0]}-D stats")
        n = self.n + other.n
        if self.n == 0 or other.n == 0:
            return other if self.n == 0 else self
        delta = other.mu - self.mu
        mu = self.mu + delta * (other.n / n)
        scatter = (
            self.sigma * max(self.n - 1, 0)
            + other.sigma * max(other.n - 1, 0)
            + np.outer(delta, delta) * (self.n * other.n / n)
        )
        return FeatureStats(mu, scatter / (n - 1), n)

    def frechet_distance(self, other: FeatureStats) -> float:
        """Eq. (1) between the Gaussians fitted to ``self`` and ``other``."""
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)

    def save(self, path: str | os.PathLike[str], key: str = "") -> None:
        """Write ``mu``, ``sigma``, ``n`` and an optional ``key`` to ``.npz`` atomically."""
        buffer = io.BytesIO()
        np.savez(buffer, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), key=np.str_(key))
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike[str], key: str | None = None) -> FeatureStats:
        """Read statistics written by :meth:`save`; with ``key``, check that it matches."""
        try:
            with np.load(path, allow_pickle=False) as f:
                mu, sigma, n, stored = f["mu"], f["sigma"], int(f["n"]), str(f["key"])
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"cannot read feature statistics {path}: {e}") from None
        if key is not None and stored != key:
            raise ValueError(f"feature statistics {path} are for {stored!r}, not {key!r}")
        return cls(mu.astype(np.float64), sigma.astype(np.float64), n)


def cached_stats(
    key: str,
    compute: Callable[[], FeatureStats],
    cache_dir: str | os.PathLike[str] | None = None,
) -> FeatureStats:
    """Reference statistics for ``key`` from ``cache_dir``, computed and stored on a miss.

    ``key`` names everything the statistics depend on (data set, split, feature extractor,
    count), e.g. ``"mnist-t10k-0:9000-mnist-features"``. The default directory is
    ``$DDIM_CACHE`` or ``~/.cache/ddim``, under ``stats/``.
    """
    root = Path(cache_dir) if cache_dir is not None else cache.cache_dir() / "stats"
    path = root / (re.sub(r"[^A-Za-z0-9._-]+", "_", key) + ".npz")
    if path.is_file():
        return FeatureStats.load(path, key)
    stats = compute()
    stats.save(path, key)
    return stats


def pixel_features(x: torch.Tensor) -> torch.Tensor:
    """Raw values, one row per sample: ``(B, ...) -> (B, prod(...))``."""
    return x.reshape(x.shape[0], -1)


def mnist_features(device: str | torch.device = "cpu", which: str | None = None) -> FeatureFn:
    """FD-MNIST features: the bundled classifier's 128-D penultimate layer (``which="mlp"``:
    the bundled second judge's, a network of another architecture).

    Images are clipped to ``[-1, 1]`` first, as they are when saved.
    """
    from ddim.models.classifier import load_classifier

    model = load_classifier(which, device=device)

    @torch.no_grad()
    def features(x: torch.Tensor) -> torch.Tensor:
        return model.features(x.float().clamp(-1, 1))

    return features


def inception_features(device: str | torch.device = "cpu") -> FeatureFn:
    """FID features: Inception-v3's 2048-D pool layer from ``pytorch-fid`` (``ddim[fid]``).

    Images in ``[-1, 1]`` with 1 or 3 channels; gray images are repeated to RGB, and
    pytorch-fid resizes to 299 x 299. Its weights are downloaded on first use.
    """
    try:
        from pytorch_fid.inception import InceptionV3
    except ImportError:
        raise RuntimeError(
            "FID needs the optional extra: pip install 'ddim[fid]' (pytorch-fid)"
        ) from None
    try:
        net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[INCEPTION_DIM]])
    except Exception as e:  # a failed download surfaces as URLError, HTTPError, RuntimeError...
        raise RuntimeError(
            f"cannot load the FID Inception-v3 weights ({type(e).__name__}: {e}); they are "
            "downloaded once into $TORCH_HOME/hub/checkpoints, which needs network access"
        ) from None
    net = net.to(device).eval()

    @torch.no_grad()
    def features(x: torch.Tensor) -> torch.Tensor:
        rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return net(((rgb.float() + 1) / 2).clamp(0, 1))[0].flatten(1)

    return features


def feature_extractor(name: str, device: str | torch.device = "cpu") -> FeatureFn:
    """The feature function called ``name`` (one of :data:`FEATURES`)."""
    if name == "mnist":
        return mnist_features(device)
    if name == "mlp":
        return mnist_features(device, "mlp")
    if name == "inception":
        return inception_features(device)
    if name == "pixels":
        return pixel_features
    raise ValueError(f"unknown features {name!r}; choose one of {', '.join(FEATURES)}")


def dataset_stats(
    feature_fn: FeatureFn,
    images: torch.Tensor,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
) -> FeatureStats:
    """Feature statistics of a data set ``(N, ...)``, computed ``batch_size`` at a time."""
    if images.shape[0] == 0:
        raise ValueError("cannot compute feature statistics of an empty data set")
    return FeatureStats.of_batches(feature_fn(c.to(device)) for c in images.split(batch_size))


def consistency(
    labels_at_s: Sequence[int] | torch.Tensor, labels_at_ref: Sequence[int] | torch.Tensor
) -> float:
    """The fraction of samples whose label at ``S`` steps matches the reference label."""
    a, b = torch.as_tensor(labels_at_s).cpu(), torch.as_tensor(labels_at_ref).cpu()
    if a.shape != b.shape or a.ndim != 1 or a.numel() == 0:
        raise ValueError(f"need two equal, non-empty 1-D label lists, got {a.shape}, {b.shape}")
    return (a == b).double().mean().item()


def _to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def merge_across_ranks(stats: FeatureStats) -> FeatureStats:
    """The merged statistics of every rank's ``stats`` (a no-op in one process).

    All ranks must hold statistics of the same dimension; the result is identical on all.
    """
    size = world()[1]
    if size == 1:
        return stats
    nccl = dist.get_backend() == "nccl"
    dev = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    packed = torch.from_numpy(np.concatenate([[stats.n], stats.mu, stats.sigma.ravel()])).to(dev)
    gathered = [torch.empty_like(packed) for _ in range(size)]
    dist.all_gather(gathered, packed)
    d = stats.mu.shape[0]
    parts = [p.cpu().numpy() for p in gathered]
    return functools.reduce(
        FeatureStats.merge,
        [FeatureStats(p[1 : 1 + d].copy(), p[1 + d :].reshape(d, d), int(p[0])) for p in parts],
    )
