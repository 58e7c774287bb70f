"""The difference between two sets of samples drawn from the same seeds, with a paired
interval.

Sample ``i`` of both sets starts from the same ``x_T`` (two cells of Table 1, or two models
sampled with the same seeds), so the errors of their scores are correlated, and their
difference is known better than the two separate intervals of :func:`ddim.eval.judges.judge`
suggest. :func:`compare` draws the indices ``i`` with replacement once per bootstrap round
and applies the same draw to both sets (a paired bootstrap); the interval of ``b - a`` is
±1.96 standard deviations of the resampled differences around the observed difference, as
:func:`ddim.eval.judges.fd_interval` does for one set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ddim.eval.judges import RECOGNIZABLE, Interval, kid, precision_recall
from ddim.eval.metrics import FeatureStats
from ddim.names import JUDGES

Features = Mapping[str, np.ndarray]


def values(
    samples: Features, reference: Features, judges: Sequence[str], stats: dict[str, FeatureStats]
) -> dict[str, float]:
    """Each judge's score of ``samples`` (no interval); ``stats`` caches the reference's
    statistics per feature space."""
    out: dict[str, float] = {}
    for name in judges:
        if name.startswith("fd-"):
            space = name[3:]
            if space not in stats:
                stats[space] = FeatureStats.from_features(reference[space])
            out[name] = FeatureStats.from_features(samples[space]).frechet_distance(stats[space])
        elif name == "kid-mnist":
            out[name] = kid(samples["mnist"], reference["mnist"]).value
        elif name in ("precision", "recall"):
            if name not in out:
                out["precision"], out["recall"] = precision_recall(
                    samples["mnist"], reference["mnist"]
                )
        elif name == "recognizable":
            out[name] = float((samples["probs"].max(axis=1) >= RECOGNIZABLE).mean())
        else:
            raise ValueError(f"unknown judge {name!r}; choose among {', '.join(JUDGES)}")
    return {name: out[name] for name in judges}


def compare(
    a: Features,
    b: Features,
    reference: Features,
    judges: Sequence[str] = JUDGES,
    boots: int = 200,
    seed: int = 0,
) -> dict[str, Interval]:
    """Each judge's ``score(b) - score(a)`` with its paired bootstrap interval (module
    docstring); ``a`` and ``b`` are the features of sets of equal size, row ``i`` of both
    from the same seed."""
    sizes = {len(v) for v in a.values()} | {len(v) for v in b.values()}
    if len(sizes) != 1:
        raise ValueError(f"paired sets need the same number of samples, got {sorted(sizes)}")
    (n,) = sizes
    stats: dict[str, FeatureStats] = {}
    va, vb = values(a, reference, judges, stats), values(b, reference, judges, stats)
    rng = np.random.default_rng(seed)
    rounds = []
    for _ in range(boots):
        i = rng.integers(0, n, n)
        ra = values({k: v[i] for k, v in a.items()}, reference, judges, stats)
        rb = values({k: v[i] for k, v in b.items()}, reference, judges, stats)
        rounds.append([rb[j] - ra[j] for j in judges])
    half = 1.96 * np.std(np.array(rounds), axis=0, ddof=1)
    return {
        j: Interval(vb[j] - va[j], vb[j] - va[j] - float(h), vb[j] - va[j] + float(h))
        for j, h in zip(judges, half, strict=True)
    }
