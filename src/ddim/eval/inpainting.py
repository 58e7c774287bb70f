"""Inpainting judged by a classifier: does the completion keep the digit's label?

For held-out digits with a region erased (a mask, 1 = known), each method completes the
region and the judge (the bundled FD-MNIST classifier) labels the result; the score is the
share labelled as the original digit, next to what the method cost in model calls. The
baseline is the nearest neighbour: the training image closest on the known pixels supplies
the unknown ones, a strong completion on MNIST.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ddim.eval.judges import share
from ddim.inpaint import inpaint
from ddim.sampling import Model
from ddim.schedule import NoiseSchedule

Labeller = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class InpaintingScore:
    """One method: its name, model calls per image, the share of completions labelled as
    the original, whether every known pixel came out unchanged, the seconds it took, and
    how many images it completed."""

    method: str
    calls: int
    accuracy: float
    known_kept: bool
    seconds: float
    n: int


def nearest_neighbour(
    x: torch.Tensor, mask: torch.Tensor, train: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """Each image's unknown pixels from the training image closest on its known pixels."""
    flat_train = (train * mask).flatten(1)
    out = []
    for part in x.split(batch_size):
        nearest = torch.cdist((part * mask).flatten(1), flat_train).argmin(dim=1)
        out.append(torch.where(mask.bool(), part, train[nearest]))
    return torch.cat(out)


def score_methods(
    model: Model,
    sched: NoiseSchedule,
    x: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    judge: Labeller,
    methods: Mapping[str, Mapping[str, Any]],
    *,
    train: torch.Tensor | None = None,
    batch_size: int = 100,
    seed: int = 0,
) -> tuple[list[InpaintingScore], dict[str, torch.Tensor]]:
    """Score every method (name -> keyword arguments of :func:`ddim.inpaint`), and the
    nearest neighbour in ``train`` if given; also return each method's completions."""
    scores, completions = [], {}
    for name, kwargs in methods.items():
        start = time.perf_counter()
        parts, calls = [], 0
        for i in range(0, len(x), batch_size):
            part = x[i : i + batch_size]
            result = inpaint(model, part, mask, sched, seed=seed + i, **kwargs)
            parts.append(result.images)
            calls = result.model_calls
        done = torch.cat(parts)
        completions[name] = done
        scores.append(_score(name, calls, done, x, labels, mask, judge, start))
    if train is not None:
        start = time.perf_counter()
        done = nearest_neighbour(x, mask, train)
        completions["nearest neighbour"] = done
        scores.append(_score("nearest neighbour", 0, done, x, labels, mask, judge, start))
    return scores, completions


def _score(
    name: str,
    calls: int,
    done: torch.Tensor,
    x: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    judge: Labeller,
    start: float,
) -> InpaintingScore:
    accuracy = (judge(done).cpu() == labels.cpu()).double().mean().item()
    kept = bool(torch.equal(done * mask, x * mask))
    return InpaintingScore(name, calls, accuracy, kept, time.perf_counter() - start, len(x))


def markdown(scores: Sequence[InpaintingScore], clean: float | None = None) -> str:
    """A table of the scores, each share with Wilson's 95 % interval (and the judge's
    accuracy on the clean digits)."""
    lines = ["| method | model calls | label kept | known pixels kept |", "|---|---:|---:|---|"]
    for s in scores:
        kept = "yes" if s.known_kept else "no"
        lines.append(f"| {s.method} | {s.calls} | {share(s.accuracy, s.n).percent()} | {kept} |")
    if clean is not None and scores:
        n = scores[0].n
        lines.append(f"| (the clean digits) | | {share(clean, n).percent()} | |")
    return "\n".join(lines) + "\n"
