"""``python -m ddim.train.classifier MNIST_DIR --out FILE [--arch cnn|mlp]``: train a judge.

Trains :class:`~ddim.models.classifier.MnistClassifier` (``cnn``, the FD-MNIST classifier)
or :class:`~ddim.models.classifier.MnistMLP` (``mlp``, the second judge) on the first 9,000
images of the MNIST test split, with random shifts of up to two pixels, and records the
accuracy on the last 1,000 (held out) in the weights file's metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor

from ddim.formats.archives import load_mnist, load_mnist_labels
from ddim.formats.atomic import atomic_write_bytes
from ddim.models.classifier import ARCHS, FORMAT, NUM_TRAIN, Judge


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by its own integer offset in ``[-max_shift, max_shift]^2``.

    Uncovered pixels become background (-1).
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1), generator=generator)
    rows = (dy + torch.arange(h))[:, :, None]
    cols = (dx + torch.arange(w))[:, None, :]
    return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)


def accuracy(model: Judge, images: Tensor, labels: Tensor) -> float:
    """The fraction of ``images`` whose predicted label equals ``labels``."""
    return (model.predict(images) == labels).double().mean().item()


def train(
    images: Tensor,
    labels: Tensor,
    epochs: int = 15,
    batch_size: int = 64,
    lr: float = 2e-3,
    max_shift: int = 2,
    seed: int = 0,
    log: bool = True,
    arch: str = "cnn",
) -> Judge:
    """Adam with a cosine learning-rate decay, cross-entropy, random shifts each epoch."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = ARCHS[arch]()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-images.shape[0] // batch_size)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for idx in torch.randperm(images.shape[0], generator=g).split(batch_size):
            x = random_shift(images[idx], max_shift, g) if max_shift else images[idx]
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            decay.step()
            total += loss.item() * idx.numel()
        if log:
            print(f"epoch {epoch + 1}/{epochs}: loss {total / images.shape[0]:.4f}", flush=True)
    return model.eval()


def save_classifier(path: str | os.PathLike[str], model: Judge, info: dict[str, Any]) -> None:
    """Write the weights and ``info`` (JSON metadata, e.g. held-out accuracy) atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "info": json.dumps(info, sort_keys=True)}
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


def main(argv: list[str] | None = None) -> None:
    """Train on the first 9,000 images of ``DATA_DIR``'s t10k files; test on the last 1,000."""
    parser = argparse.ArgumentParser(prog="python -m ddim.train.classifier", description=__doc__)
    parser.add_argument("data_dir", type=Path, help="folder with the t10k-*-ubyte.gz files")
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors to write")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="cnn")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = load_mnist(args.data_dir / "t10k-images-idx3-ubyte.gz")
    labels = load_mnist_labels(args.data_dir / "t10k-labels-idx1-ubyte.gz")
    start = time.perf_counter()
    model = train(images[:NUM_TRAIN], labels[:NUM_TRAIN], epochs=args.epochs, seed=args.seed,
                  arch=args.arch)  # fmt: skip
    seconds = time.perf_counter() - start
    held_out = accuracy(model, images[NUM_TRAIN:], labels[NUM_TRAIN:])
    info = {
        "heldout_accuracy": held_out,
        "heldout": f"t10k images {NUM_TRAIN}..{images.shape[0] - 1}",
        "train": f"t10k images 0..{NUM_TRAIN - 1}",
        "train_accuracy": accuracy(model, images[:NUM_TRAIN], labels[:NUM_TRAIN]),
        "arch": args.arch,
        "epochs": args.epochs,
        "seed": args.seed,
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    save_classifier(args.out, model, info)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
