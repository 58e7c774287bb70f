"""The guidance trade-off (Ho & Salimans 2022, Fig. 1; Dhariwal & Nichol 2021, Fig. 2): for
each guidance strength, how often samples are of the requested class, against how close the
class-balanced set is to the data.

A set of ``n`` samples asks for ``n // K`` of each of the ``K`` classes (sample ``i`` is of
class ``i // (n // K)`` and drawn with seed ``seed + i``). Its *accuracy* is the share that a
judge classifier (the bundled FD-MNIST classifier on MNIST) assigns the requested class; its
FD is against the reference statistics. Classifier-free guidance varies ``w``
(``options.guidance``), classifier guidance ``s`` (``options.classifier_scale``).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ddim.eval.judges import share
from ddim.eval.metrics import FeatureFn, FeatureStats, Tap
from ddim.eval.reports import write_json
from ddim.formats.atomic import atomic_write_bytes, atomic_write_text
from ddim.guidance import Classifier, num_classes
from ddim.sampling import Model, SamplerOptions
from ddim.schedule import NoiseSchedule
from ddim.workflows import generate

Labeller = Callable[[torch.Tensor], torch.Tensor]
KINDS = {"cfg": "guidance", "classifier": "classifier_scale"}


@dataclass(frozen=True)
class GuidancePoint:
    """One guidance strength: its kind (``cfg`` or ``classifier``), the strength, the
    share of samples assigned their class, the FD of the set, the seconds it took, and the
    number of samples."""

    kind: str
    strength: float
    accuracy: float
    fd: float
    seconds: float
    n: int


def balanced_labels(k: int, n: int) -> torch.Tensor:
    """``n // k`` labels of each class ``0 .. k-1``, class by class."""
    if n < k:
        raise ValueError(f"a class-balanced set of {k} classes needs n >= {k}, got {n}")
    return torch.arange(k).repeat_interleave(n // k)


def guidance_curve(
    model: Model,
    sched: NoiseSchedule,
    *,
    kind: str,
    strengths: Sequence[float],
    shape: Sequence[int],
    n: int,
    feature_fn: FeatureFn,
    reference: FeatureStats,
    labeller: Labeller,
    options: SamplerOptions,
    classifier: Classifier | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    tap: Tap | None = None,
) -> list[GuidancePoint]:
    """:class:`GuidancePoint` of each strength of ``kind`` (module docstring). ``tap`` wraps
    the feature function of each strength's set, named ``cfg-w3`` or ``classifier-s2``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    k = num_classes(model) or num_classes(classifier)
    if not k:
        raise ValueError("the guidance curve needs a class-conditional model or a classifier")
    labels = balanced_labels(k, n)
    points = []
    for strength in strengths:
        start = time.perf_counter()
        run = replace(options, **{KINDS[kind]: strength})
        x = generate(
            model, sched, len(labels), shape, seed=seed, batch_size=batch_size, device=device,
            options=run, labels=labels, classifier=classifier,
        )  # fmt: skip
        accuracy = (labeller(x).cpu() == labels).double().mean().item()
        letter = "w" if kind == "cfg" else "s"
        fn = feature_fn if tap is None else tap(f"{kind}-{letter}{strength:g}", feature_fn)
        fd = FeatureStats.of_batches(fn(c) for c in x.split(batch_size))
        seconds = time.perf_counter() - start
        points.append(
            GuidancePoint(
                kind, strength, accuracy, fd.frechet_distance(reference), seconds, len(labels)
            )
        )
    return points


def markdown(points: Sequence[GuidancePoint], unconditional_fd: float | None) -> str:
    """A table of accuracy (with Wilson's 95 % interval) and FD per kind and strength."""
    lines = ["| guidance | strength | class accuracy | FD |", "|---|---:|---:|---:|"]
    for p in points:
        name = "classifier-free (w)" if p.kind == "cfg" else "classifier (s)"
        accuracy = share(p.accuracy, p.n).percent()
        lines.append(f"| {name} | {p.strength:g} | {accuracy} | {p.fd:.2f} |")
    if unconditional_fd is not None:
        lines.append(f"| none (null label) | | | {unconditional_fd:.2f} |")
    return "\n".join(lines) + "\n"


def tradeoff_png(points: Sequence[GuidancePoint], title: str = "") -> bytes:
    """FD against class accuracy, one line per kind, each point labelled by its strength."""
    fig = Figure(figsize=(5.5, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for kind in dict.fromkeys(p.kind for p in points):
        mine = [p for p in points if p.kind == kind]
        name = "classifier-free guidance (w)" if kind == "cfg" else "classifier guidance (s)"
        ax.plot([100 * p.accuracy for p in mine], [p.fd for p in mine], marker="o", label=name)
        for p in mine:
            ax.annotate(f"{p.strength:g}", (100 * p.accuracy, p.fd), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))  # fmt: skip
    ax.set_xlabel("samples assigned their class (%)")
    ax.set_ylabel("FD")
    ax.set_title(title, fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_report(
    points: Sequence[GuidancePoint],
    unconditional_fd: float | None,
    out_dir: str | Path,
    meta: dict[str, object],
) -> str:
    """``guidance.{md,json,png}`` in ``out_dir``; returns the markdown table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(points, unconditional_fd)
    atomic_write_text(out / "guidance.md", f"{meta.get('title', '')}\n\n{table}")
    write_json(
        out / "guidance.json",
        {"meta": meta, "points": [asdict(p) for p in points], "unconditional_fd": unconditional_fd},
    )
    atomic_write_bytes(out / "guidance.png", tradeoff_png(points, str(meta.get("title", ""))))
    return table
