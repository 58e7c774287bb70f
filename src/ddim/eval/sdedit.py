"""SDEdit's trade-off measured on degraded held-out digits: realism against faithfulness,
over the strength.

    python -m ddim.eval.sdedit MNIST_DIR [--degrade downsample|erase] [-n 500] [--steps 20]
                                         [--strengths 0.1,0.2,...,1] [--out-dir DIR]

takes the first ``n`` held-out digits (9,000 on), degrades them (``downsample``: averaged to
7x7 and scaled back up bilinearly; ``erase``: the central 12x12 block set to black), and
edits them with the bundled ``mnist`` at each strength (:func:`ddim.edit.edit`, DDIM,
η = 0, image i's noise from seed i). For each strength it reports

- **realism**: FD-MNIST of the edits against 1,000 training digits drawn at random from
  0-8,999 (a block of consecutive ones is a narrower mix of writers) and the bundled
  classifier's mean confidence (its largest softmax probability);
- **faithfulness**: the share the classifier labels as the original digit, and the
  per-dim MSE (pixels on [0, 1]) to the degraded input and to the clean original;

with the degraded inputs (strength 0) and the clean digits as the two ends. It writes
``sdedit-DEGRADE.{md,json,png}`` (the table, the numbers, the curve) and
``sdedit-DEGRADE-strip.png`` (eight digits: clean, degraded, then one edit per strength).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import ddim
from ddim.edit import edit, sdedit_timesteps
from ddim.eval.metrics import FeatureStats
from ddim.formats.archives import load_mnist, load_mnist_labels
from ddim.formats.atomic import atomic_write_text
from ddim.formats.images import save_png
from ddim.models.classifier import NUM_TRAIN, Judge, load_classifier
from ddim.workflows import per_dim_mse

DEGRADATIONS = ("downsample", "erase")


def degrade(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``x`` ``(B, 1, 28, 28)`` in ``[-1, 1]`` degraded as the module docstring says."""
    if kind == "downsample":
        small = F.avg_pool2d(x, 4)
        return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    if kind == "erase":
        out = x.clone()
        out[..., 8:20, 8:20] = -1.0
        return out
    raise ValueError(f"unknown degradation {kind!r}; choose one of {', '.join(DEGRADATIONS)}")


@dataclass(frozen=True)
class Row:
    """One strength (``None``: the clean digits; 0: the degraded inputs)."""

    strength: float | None
    calls: int
    fd: float
    confidence: float
    label_kept: float
    mse_to_input: float
    mse_to_clean: float


def score(
    name: float | None,
    calls: int,
    x: torch.Tensor,
    degraded: torch.Tensor,
    clean: torch.Tensor,
    labels: torch.Tensor,
    judge: Judge,
    reference: FeatureStats,
) -> Row:
    """The realism and faithfulness of the images ``x``."""
    with torch.no_grad():
        x = x.clamp(-1, 1)
        probs = torch.cat([judge(part).softmax(dim=1) for part in x.split(500)])
        features = torch.cat([judge.features(part) for part in x.split(500)])
    return Row(
        strength=name,
        calls=calls,
        fd=FeatureStats.from_features(features).frechet_distance(reference),
        confidence=probs.max(dim=1).values.mean().item(),
        label_kept=(probs.argmax(dim=1) == labels).double().mean().item(),
        mse_to_input=per_dim_mse(x, degraded).mean().item(),
        mse_to_clean=per_dim_mse(x, clean).mean().item(),
    )


def markdown(rows: list[Row]) -> str:
    """The Markdown table of ``rows``, one line per strength (the clean digits and the
    degraded input named as such)."""
    lines = [
        "| strength | model calls | FD-MNIST | confidence | label kept | MSE to input "
        "| MSE to clean |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        names = {None: "clean digits", 0.0: "degraded input"}
        name = names[r.strength] if r.strength in names else f"{r.strength:g}"
        lines.append(
            f"| {name} | {r.calls} | {r.fd:.1f} | {r.confidence:.3f} | "
            f"{100 * r.label_kept:.1f} % | {r.mse_to_input:.4f} | {r.mse_to_clean:.4f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path, title: str) -> None:
    """FD and label kept against the MSE to the input, one point per strength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edits = [r for r in rows if r.strength]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    strengths = [r.strength for r in edits]
    left.plot(strengths, [r.fd for r in edits], "o-", label="FD-MNIST (realism, lower is better)")
    left.axhline(rows[0].fd, ls=":", c="gray", label="clean digits")
    left.set_xlabel("strength")
    left.set_ylabel("FD-MNIST")
    left.legend(fontsize=8)
    right.plot(strengths, [100 * r.label_kept for r in edits], "o-", label="label kept %")
    right.plot(strengths, [100 * r.confidence for r in edits], "s--", label="confidence %")
    twin = right.twinx()
    twin.plot(strengths, [r.mse_to_input for r in edits], "^-", c="C3", label="MSE to input")
    twin.set_ylabel("per-dim MSE to the input", color="C3")
    right.set_xlabel("strength")
    right.legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Write the table, numbers, curve and strip of the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m ddim.eval.sdedit", description=__doc__)
    parser.add_argument("data_dir", type=Path, help="folder with the t10k-*-ubyte.gz files")
    parser.add_argument("--degrade", choices=DEGRADATIONS, default="downsample")
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strengths", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,1.0")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    images = load_mnist(args.data_dir / "t10k-images-idx3-ubyte.gz")
    labels = load_mnist_labels(args.data_dir / "t10k-labels-idx1-ubyte.gz")[NUM_TRAIN:]
    clean, labels = images[NUM_TRAIN:][: args.n], labels[: args.n]
    degraded = degrade(clean, args.degrade)
    model, sched = ddim.load_pretrained("mnist")
    judge = load_classifier().eval()
    drawn = torch.randperm(NUM_TRAIN, generator=torch.Generator().manual_seed(0))[:1000]
    with torch.no_grad():
        reference = FeatureStats.from_features(judge.features(images[drawn]))
    common = (degraded, clean, labels, judge, reference)
    rows = [score(None, 0, clean, *common), score(0.0, 0, degraded, *common)]
    options = ddim.SamplerOptions(steps=args.steps, precision=args.precision)
    strip = [clean[:8], degraded[:8]]
    for strength in (float(s) for s in args.strengths.split(",")):
        x = torch.cat([
            edit(model, degraded[i : i + 250], sched, strength=strength, options=options, seed=i)
            for i in range(0, len(degraded), 250)
        ])  # fmt: skip
        calls = len(sdedit_timesteps(sched, options, strength))
        rows.append(score(strength, calls, x, *common))
        strip.append(x[:8])
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"sdedit-{args.degrade}"
    title = (f"SDEdit of {len(clean)} held-out digits, {args.degrade}d "
             f"(mnist, {args.steps} DDIM steps)")  # fmt: skip
    atomic_write_text(stem.with_suffix(".md"), f"{title}\n\n{markdown(rows)}")
    atomic_write_text(stem.with_suffix(".json"), json.dumps(
        {"degrade": args.degrade, "n": len(clean), "steps": args.steps,
         "rows": [asdict(r) for r in rows]}, indent=2) + "\n")  # fmt: skip
    plot(rows, stem.with_suffix(".png"), title)
    columns = torch.stack(strip, dim=1).flatten(0, 1)  # a row per digit
    save_png(stem.parent / f"{stem.name}-strip.png", columns, nrow=len(strip))
    print(markdown(rows) + f"wrote {stem}.{{md,json,png}} and {stem.name}-strip.png")


if __name__ == "__main__":
    main()
