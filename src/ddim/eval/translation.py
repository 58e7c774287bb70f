"""Class translation (DDIB) measured on held-out digits: how many translations the judge
classifier assigns the target class, and how close translating back comes to the input.

    python -m ddim.eval.translation MNIST_DIR [--pairs 3:8,1:7,4:9] [-n 100] [--steps 50]
                                              [--guidance W]

takes the first ``n`` held-out digits (9,000 on) of each source class, translates them with
the bundled ``mnist-cond`` (:func:`ddim.edit.translate`, DDIM at η = 0, encoding and
decoding under classifier-free guidance ``W`` if given), and prints, per pair,
the share assigned the target class by the bundled FD-MNIST classifier and the per-dim MSE
(on [0, 1] pixels, as Table 2) of the round trip source -> target -> source.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import ddim
from ddim.edit import translate
from ddim.formats.archives import load_mnist, load_mnist_labels
from ddim.models.classifier import NUM_TRAIN, load_classifier
from ddim.workflows import per_dim_mse


def main(argv: list[str] | None = None) -> None:
    """Print the table of the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m ddim.eval.translation", description=__doc__)
    parser.add_argument("data_dir", type=Path, help="folder with the t10k-*-ubyte.gz files")
    parser.add_argument("--pairs", default="3:8,1:7,4:9")
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=None, help="CFG weight, both ways")
    args = parser.parse_args(argv)
    images = load_mnist(args.data_dir / "t10k-images-idx3-ubyte.gz")[NUM_TRAIN:]
    labels = load_mnist_labels(args.data_dir / "t10k-labels-idx1-ubyte.gz")[NUM_TRAIN:]
    model, sched = ddim.load_pretrained("mnist-cond")
    judge = load_classifier().predict
    options = ddim.SamplerOptions(steps=args.steps, guidance=args.guidance)
    print("| translation | n | assigned the target class | round-trip per-dim MSE |")
    print("|---|---:|---:|---:|")
    for pair in args.pairs.split(","):
        a, b = (int(v) for v in pair.split(":"))
        x = images[labels == a][: args.n]
        there = translate(model, x, sched, source=a, target=b, options=options)
        back = translate(model, there, sched, source=b, target=a, options=options)
        share = (judge(there) == b).double().mean().item()
        mse = per_dim_mse(x, back).mean().item()
        print(f"| {a} → {b} | {len(x)} | {100 * share:.1f} % | {mse:.5f} |", flush=True)


if __name__ == "__main__":
    with torch.no_grad():
        main()
