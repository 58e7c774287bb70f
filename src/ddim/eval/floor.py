"""The real-data floor of a Fréchet distance: what real images score at the same ``n``.

FD between two finite sets is biased upwards: two independent sets of ``n`` images from
one distribution score well above 0 at any practical ``n``. The fair yardstick for a
model's FD of ``n`` samples is therefore the FD of ``n`` *real* images from the
distribution the model was trained on, against the same reference. A model that sampled
its training distribution exactly would score about that (FID papers call it the
train-vs-test FID).

Those ``n`` images must be a random draw from the training set, as the model's samples
are. A contiguous block of an ordered data set is not: MNIST's test split, for one, holds
the 5,000 images of NIST's SD-3 (Census Bureau writers) first and the 5,000 of SD-1
(students) after them, and blocks of 1,000 within either half differ from each other
(by writer, most likely), so a block holds a narrower mix than a random 1,000 and can
score far worse. :func:`real_data_floor`
reports both, so the difference is visible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ddim.eval.metrics import FeatureFn, FeatureStats


@dataclass(frozen=True)
class Floor:
    """FD of ``n`` real images against the reference: one value per random draw (draw
    ``i`` from seed ``seed + i``) and per contiguous block ``[start, start + n)`` of the
    training images (offsets relative to them)."""

    n: int
    seed: int
    draws: list[float]
    blocks: list[tuple[int, int, float]]

    def summary(self) -> dict[str, float]:
        """Mean, standard deviation, minimum and maximum of the random draws' FD."""
        d = np.asarray(self.draws, dtype=np.float64)
        std = float(d.std(ddof=1)) if d.size > 1 else 0.0
        return {"mean": float(d.mean()), "std": std, "min": float(d.min()), "max": float(d.max())}

    def to_dict(self) -> dict[str, object]:
        """The fields as a dict for JSON, with :meth:`summary` under ``"summary"``."""
        return asdict(self) | {"summary": self.summary()}


def draw_indices(total: int, n: int, seed: int) -> torch.Tensor:
    """The ``n`` distinct indices in ``0..total-1`` of the draw with ``seed``."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]


def real_data_floor(
    feature_fn: FeatureFn,
    train: torch.Tensor,
    ref: FeatureStats,
    n: int,
    draws: int = 10,
    seed: int = 0,
    batch_size: int = 500,
) -> Floor:
    """FD (eq. 1 of :mod:`ddim.eval.metrics`) of ``n`` real images of ``train`` against
    ``ref``: ``draws`` random draws without replacement, and every whole block of ``n``
    consecutive images. Features are computed once per image."""
    total = train.shape[0]
    if not 0 < n <= total:
        raise ValueError(f"cannot draw n = {n} of {total} real images")
    if draws < 1:
        raise ValueError(f"need at least one draw, got {draws}")
    with torch.no_grad():
        feats = torch.cat([feature_fn(c) for c in train.split(batch_size)])

    def fd(index: torch.Tensor | slice) -> float:
        return FeatureStats.from_features(feats[index]).frechet_distance(ref)

    return Floor(
        n=n,
        seed=seed,
        draws=[fd(draw_indices(total, n, seed + i)) for i in range(draws)],
        blocks=[(a, a + n, fd(slice(a, a + n))) for a in range(0, total - n + 1, n)],
    )
