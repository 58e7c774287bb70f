"""Several judges of a set of samples, each with an interval, so that a reader sees which
differences are real.

- **FD** (eq. 1 of :mod:`ddim.eval.metrics`) in three feature spaces: ``mnist`` (the bundled
  CNN's 128-D features), ``mlp`` (the bundled fully connected judge's 128-D features: another
  architecture, trained apart) and ``pca`` (the first 64 principal components of the
  training images' pixels). Interval: ±1.96 standard deviations of the FD over bootstrap
  resamples of the samples (the reference fixed). Percentiles would not do: a resample
  repeats samples, and FD's upward bias at a smaller effective n moves the whole bootstrap
  distribution above the value.
- **KID** (Bińkowski et al. 2018) in the ``mnist`` space: the unbiased estimate of the
  squared MMD with the cubic kernel ``k(x, y) = (x.y / d + 1)^3``, and its standard error
  from the U-statistic's leading variance term; interval: ±1.96 standard errors.
- **Precision and recall** (Kynkäänniemi et al. 2019) in the ``mnist`` space, with the
  ``prdc`` package (Naeem et al. 2020) at k = 5, and **recognizability**: the share of
  samples the CNN assigns a class with probability at least 0.9. Intervals: Wilson's 95 %
  interval of a proportion (given the real images' manifold).

:func:`judge` scores one set; :func:`floor` scores random draws of real images the same
way, the level that no model can beat at that ``n``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ddim.eval.metrics import FeatureStats
from ddim.models.classifier import Judge, load_classifier
from ddim.names import JUDGES

#: Lower is better for these; higher for the rest.
LOWER_IS_BETTER = ("fd-mnist", "fd-mlp", "fd-pca", "kid-mnist")
PCA_COMPONENTS = 64
RECOGNIZABLE = 0.9
NEAREST_K = 5


@dataclass(frozen=True)
class Interval:
    """A score and its 95 % interval."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        digits = 2 if abs(self.value) >= 1 else 4
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def percent(self) -> str:
        """A share as ``83.0 % [80.6, 85.2]``."""
        return f"{100 * self.value:.1f} % [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def wilson(successes: int, n: int, z: float = 1.96) -> Interval:
    """Wilson's interval of the proportion ``successes / n``."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, centre - half, centre + half)


def share(p: float, n: int) -> Interval:
    """Wilson's interval of a share ``p`` of ``n`` (``p * n`` rounded to a count)."""
    return wilson(round(p * n), n)


def fd_interval(
    features: np.ndarray, reference: FeatureStats, boots: int = 200, seed: int = 0
) -> Interval:
    """FD of ``features`` ``(N, D)`` to ``reference``, with a bootstrap interval."""
    value = FeatureStats.from_features(features).frechet_distance(reference)
    rng = np.random.default_rng(seed)
    n = len(features)
    resampled = [
        FeatureStats.from_features(features[rng.integers(0, n, n)]).frechet_distance(reference)
        for _ in range(boots)
    ]
    half = 1.96 * float(np.std(resampled, ddof=1))
    return Interval(value, value - half, value + half)


def cubic_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel ``(x.y / d + 1)^3`` between the rows of ``x`` and ``y``."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid(x: np.ndarray, y: np.ndarray) -> Interval:
    """The unbiased squared MMD between samples ``x`` and reference ``y`` (both ``(N, D)``,
    in float64) under :func:`cubic_kernel`, and its standard error.

    ``MMD^2_u = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)``.
    The standard error pairs ``x_i`` with ``y_i`` (the first ``min(N, M)`` of each) and takes
    the U-statistic's leading variance ``4 Var_i(h_i) / n``, where ``h_i`` is the mean over
    ``j != i`` of ``h(i, j) = k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(x_j, y_i)``.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    kxx, kyy, kxy = cubic_kernel(x, x), cubic_kernel(y, y), cubic_kernel(x, y)
    n, m = len(x), len(y)
    value = (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * kxy.mean()
    )
    p = min(n, m)
    h = kxx[:p, :p] + kyy[:p, :p] - kxy[:p, :p] - kxy[:p, :p].T
    np.fill_diagonal(h, 0.0)
    rows = h.sum(axis=1) / (p - 1)
    se = math.sqrt(4 * rows.var(ddof=1) / p)
    return Interval(float(value), float(value - 1.96 * se), float(value + 1.96 * se))


@dataclass
class Spaces:
    """The feature spaces of the judges, built once: the two classifiers and the PCA basis
    of ``train`` (images ``(N, 1, 28, 28)`` in ``[-1, 1]``)."""

    cnn: Judge
    mlp: Judge
    pca_mean: torch.Tensor
    pca_basis: torch.Tensor

    @classmethod
    def build(cls, train: torch.Tensor, device: str | torch.device = "cpu") -> Spaces:
        """The spaces of ``train``: its pixel mean and first :data:`PCA_COMPONENTS`
        principal directions (an SVD in float64), and both bundled classifiers on ``device``."""
        flat = train.flatten(1).double()
        mean = flat.mean(dim=0)
        _, _, v = torch.linalg.svd(flat - mean, full_matrices=False)
        return cls(
            load_classifier(device=device), load_classifier("mlp", device=device),
            mean, v[:PCA_COMPONENTS].T.contiguous(),
        )  # fmt: skip

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Every space's features of ``x`` (clipped to ``[-1, 1]``, as saved images are),
        and the CNN's class probabilities under ``"probs"``."""
        x = x.float().clamp(-1, 1)
        device = next(self.cnn.parameters()).device
        parts: dict[str, list[torch.Tensor]] = {"mnist": [], "mlp": [], "probs": []}
        for chunk in x.split(500):
            chunk = chunk.to(device)
            parts["mnist"].append(self.cnn.features(chunk).cpu())
            parts["mlp"].append(self.mlp.features(chunk).cpu())
            parts["probs"].append(self.cnn(chunk).softmax(dim=1).cpu())
        out = {k: torch.cat(v).double().numpy() for k, v in parts.items()}
        out["pca"] = ((x.flatten(1).double().cpu() - self.pca_mean) @ self.pca_basis).numpy()
        return out


def precision_recall(samples: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Precision and recall (Kynkäänniemi et al. 2019) of ``samples`` against ``reference``
    features, with ``prdc``'s k-nearest-neighbour manifolds (k = :data:`NEAREST_K`)."""
    from prdc import compute_prdc

    fewest = min(len(samples), len(reference))
    if fewest <= NEAREST_K + 1:
        raise ValueError(
            f"precision and recall need more than {NEAREST_K + 1} images in each "
            f"set (their k = {NEAREST_K} nearest neighbours); one has {fewest}"
        )
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the counts
        pr = compute_prdc(reference, samples, nearest_k=NEAREST_K)
    return float(pr["precision"]), float(pr["recall"])


def judge(
    samples: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    judges: Sequence[str] = JUDGES,
    seed: int = 0,
) -> dict[str, Interval]:
    """Score the features of a set of samples against those of the reference images
    (:meth:`Spaces.features` of each)."""
    out: dict[str, Interval] = {}
    stats: dict[str, FeatureStats] = {}
    for name in judges:
        if name.startswith("fd-"):
            space = name[3:]
            if space not in stats:
                stats[space] = FeatureStats.from_features(reference[space])
            out[name] = fd_interval(samples[space], stats[space], seed=seed)
        elif name == "kid-mnist":
            out[name] = kid(samples["mnist"], reference["mnist"])
        elif name in ("precision", "recall"):
            if "precision" not in out:
                precision, recall = precision_recall(samples["mnist"], reference["mnist"])
                n_fake, n_real = len(samples["mnist"]), len(reference["mnist"])
                out["precision"] = wilson(round(precision * n_fake), n_fake)
                out["recall"] = wilson(round(recall * n_real), n_real)
        elif name == "recognizable":
            sure = int((samples["probs"].max(axis=1) >= RECOGNIZABLE).sum())
            out[name] = wilson(sure, len(samples["probs"]))
        else:
            raise ValueError(f"unknown judge {name!r}; choose among {', '.join(JUDGES)}")
    return {name: out[name] for name in judges}


def markdown(
    rows: Mapping[str, Mapping[str, Interval]], head: str = "samples", bold_nonzero: bool = False
) -> str:
    """One row per set of samples, one column per judge (those of the first row), each cell
    the score and its interval; with ``bold_nonzero`` (differences), in bold where the
    interval leaves out zero."""

    def cell(s: Interval) -> str:
        return f"**{s}**" if bold_nonzero and (s.low > 0 or s.high < 0) else str(s)

    names = list(next(iter(rows.values())))
    lines = [f"| {head} | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {row} | " + " | ".join(cell(s[j]) for j in names) + " |"
              for row, s in rows.items()]  # fmt: skip
    return "\n".join(lines) + "\n"


def as_json(rows: Mapping[str, Mapping[str, Interval]]) -> str:
    """The rows of :func:`markdown` as JSON: ``{row: {judge: {value, low, high}}}``."""
    return json.dumps({row: {j: vars(v) for j, v in s.items()} for row, s in rows.items()},
                      indent=1) + "\n"  # fmt: skip


def floor(
    pool: torch.Tensor,
    n: int,
    reference: dict[str, np.ndarray],
    features: Callable[[torch.Tensor], dict[str, np.ndarray]],
    judges: Sequence[str] = JUDGES,
    draws: int = 5,
    seed: int = 0,
) -> dict[str, Interval]:
    """The judges' scores of ``draws`` random sets of ``n`` real images from ``pool``: their
    mean, and the lowest and highest draw as its range."""
    gen = torch.Generator().manual_seed(seed)
    scores = [
        judge(features(pool[torch.randperm(len(pool), generator=gen)[:n]]), reference, judges)
        for _ in range(draws)
    ]
    return {
        name: Interval(
            float(np.mean([s[name].value for s in scores])),
            min(s[name].value for s in scores),
            max(s[name].value for s in scores),
        )
        for name in judges
    }
