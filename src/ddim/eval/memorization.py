"""A memorization check: how close each sample lies to its nearest training image.

A model that copies its training set produces samples at distance ≈ 0 from some training
image. Real images it never saw (the held-out split) set the scale: if samples lie no
closer to the training set than held-out images do, the model generalizes; a left tail of
samples far closer than any held-out image is memorization (Carlini et al. 2023 use the
same nearest-neighbour test on pixels).

Distances are Euclidean in pixel space with pixels in ``[0, 1]`` (images are clipped from
the model convention ``[-1, 1]`` first): ``d(x, y) = |x - y|_2`` over all ``C·H·W`` pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch

QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``(N, C·H·W)`` float64 rows of images clipped from ``[-1, 1]`` to ``[0, 1]``."""
    return ((x.double().clamp(-1, 1) + 1) / 2).flatten(1)


def nearest_neighbours(
    queries: torch.Tensor, keys: torch.Tensor, chunk: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query image, the distance to its nearest key image and that key's index.

    ``|q - k|^2 = |q|^2 + |k|^2 - 2 q·k`` in float64 (exact to ~1e-12 for 8-bit-range
    pixels), ``chunk`` queries at a time so the ``chunk × len(keys)`` matrix stays small.
    """
    if queries.shape[1:] != keys.shape[1:]:
        raise ValueError(
            f"queries {tuple(queries.shape[1:])} and keys {tuple(keys.shape[1:])} differ in shape"
        )
    if keys.shape[0] == 0:
        raise ValueError("nearest_neighbours needs at least one key image")
    k = _unit_rows(keys)
    k_sq = (k * k).sum(1)
    distances, indices = [], []
    for q in _unit_rows(queries).split(chunk):
        d_sq = (q * q).sum(1, keepdim=True) + k_sq - 2 * q @ k.T
        best, index = d_sq.min(dim=1)
        distances.append(best.clamp_min(0).sqrt())
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


@dataclass(frozen=True)
class Distances:
    """Nearest-training-image distances of one set of images, summarised by quantiles."""

    values: torch.Tensor
    indices: torch.Tensor

    def quantiles(self, qs: tuple[float, ...] = QUANTILES) -> dict[str, float]:
        """``{"q0.05": ..., ...}``: the requested quantiles of the distances."""
        values = torch.quantile(self.values, torch.tensor(qs, dtype=torch.float64))
        return {f"q{q:g}": float(v) for q, v in zip(qs, values, strict=True)}

    def share_below(self, threshold: float) -> float:
        """The share of distances strictly below ``threshold``."""
        return float((self.values < threshold).double().mean())


@dataclass(frozen=True)
class MemorizationReport:
    """Samples and held-out images, each against the training set."""

    samples: Distances
    heldout: Distances

    def summary(self) -> dict[str, object]:
        """Quantiles of both, and the share of samples closer to the training set than the
        closest held-out image (0 for a model that does not copy)."""
        floor = float(self.heldout.values.min())
        return {
            "metric": "L2 distance in [0, 1] pixels to the nearest training image",
            "samples": self.samples.quantiles(),
            "heldout": self.heldout.quantiles(),
            "samples_closer_than_any_heldout": self.samples.share_below(floor),
            "n_samples": int(self.samples.values.numel()),
            "n_heldout": int(self.heldout.values.numel()),
        }

    def closest_pairs(
        self, samples: torch.Tensor, train: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` samples nearest to the training set and their neighbours, closest first."""
        order = self.samples.values.argsort()[:k]
        return samples[order], train[self.samples.indices[order]]


def memorization(
    samples: torch.Tensor, train: torch.Tensor, heldout: torch.Tensor
) -> MemorizationReport:
    """Nearest-training-image distances of ``samples`` and of ``heldout``."""
    return MemorizationReport(
        Distances(*nearest_neighbours(samples, train)),
        Distances(*nearest_neighbours(heldout, train)),
    )


def histogram_png(report: MemorizationReport, title: str = "") -> bytes:
    """Both distance distributions as overlaid histograms."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    both = torch.cat([report.samples.values, report.heldout.values])
    bins = torch.linspace(0, float(both.max()) * 1.02, 50).numpy()
    for name, d in (("samples", report.samples), ("held-out real", report.heldout)):
        ax.hist(d.values.numpy(), bins=bins, alpha=0.55, density=True, label=name)
    ax.set_xlabel("L2 distance to the nearest training image (pixels in [0, 1])")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=8)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
