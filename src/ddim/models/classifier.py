"""A small MNIST classifier: the feature extractor of FD-MNIST and the labeller of consistency.

Inputs are ``(B, 1, 28, 28)`` in ``[-1, 1]``, like every data set in
:mod:`ddim.formats.datasets`. The
penultimate layer (:meth:`MnistClassifier.features`, 128 values after a ReLU) plays the role
Inception-v3's pool layer plays for FID; the logits give the class labels.

The bundled weights (``ddim/assets/mnist_classifier.safetensors``) come from::

    python -m ddim.models.classifier MNIST_DIR --out src/ddim/assets/mnist_classifier.safetensors

which trains on the first 9,000 images of the MNIST test split, with random shifts of up to
two pixels, and records the accuracy on the last 1,000 (held out) in the file's metadata.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddim.formats.atomic import atomic_write_bytes
from ddim.formats.datasets import load_mnist, read_idx

FORMAT = "ddim-mnist-classifier"
ASSET = "mnist_classifier.safetensors"
LABELS_MAGIC = 2049
NUM_TRAIN = 9000
FEATURE_DIM = 128


def load_mnist_labels(path: str | os.PathLike[str]) -> Tensor:
    """An idx1-ubyte labels file (raw or gzip-compressed) as a LongTensor ``(N,)``."""
    (n,), raw = read_idx(path, "MNIST labels file", LABELS_MAGIC, 1)
    if len(raw) != 8 + n:
        raise ValueError(f"MNIST labels file {path} has {len(raw) - 8} labels, header says {n}")
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8)
    if labels.max(initial=0) > 9:
        raise ValueError(f"MNIST labels file {path} holds labels above 9")
    return torch.from_numpy(labels.astype(np.int64))


class MnistClassifier(nn.Module):
    """Three conv stages (28 -> 14 -> 7 -> 3 pixels), a 128-unit feature layer, 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv4 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc = nn.Linear(128 * 3 * 3, FEATURE_DIM)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: Tensor) -> Tensor:
        """The penultimate activations ``(B, 128)``: the FD-MNIST feature space."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"the MNIST classifier needs (B, 1, 28, 28), got {tuple(x.shape)}")
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv3(F.relu(self.conv2(h)))), 2)
        h = F.max_pool2d(F.relu(self.conv4(h)), 2)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, 10)``."""
        return self.head(self.dropout(self.features(x)))

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 1000) -> Tensor:
        """Predicted labels ``(B,)`` (LongTensor on ``x``'s device), in eval mode."""
        was_training = self.training
        self.eval()
        labels = torch.cat([self(chunk).argmax(dim=1) for chunk in x.split(batch_size)])
        self.train(was_training)
        return labels


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


def accuracy(model: MnistClassifier, images: Tensor, labels: Tensor) -> float:
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
) -> MnistClassifier:
    """Adam with a cosine learning-rate decay, cross-entropy, random shifts each epoch."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = MnistClassifier()
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


def save_classifier(
    path: str | os.PathLike[str], model: MnistClassifier, info: dict[str, Any]
) -> None:
    """Write the weights and ``info`` (JSON metadata, e.g. held-out accuracy) atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "info": json.dumps(info, sort_keys=True)}
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


def classifier_info(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The metadata stored with a classifier (the bundled one by default)."""
    with safetensors.safe_open(str(_resolve(path)), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{_resolve(path)} is not a ddim MNIST classifier file")
    return json.loads(meta["info"])


def load_classifier(
    path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> MnistClassifier:
    """An eval-mode classifier from ``path`` (the bundled weights by default)."""
    file = _resolve(path)
    classifier_info(file)
    model = MnistClassifier()
    model.load_state_dict(safetensors.torch.load_file(str(file)))
    return model.to(device).eval()


def _resolve(path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        path = Path(str(importlib.resources.files("ddim") / "assets" / ASSET))
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"MNIST classifier {file} is missing; train it with `python -m ddim.models.classifier`"
        )
    return file


def main(argv: list[str] | None = None) -> None:
    """Train on the first 9,000 images of ``DATA_DIR``'s t10k files; test on the last 1,000."""
    parser = argparse.ArgumentParser(prog="python -m ddim.models.classifier", description=__doc__)
    parser.add_argument("data_dir", type=Path, help="folder with the t10k-*-ubyte.gz files")
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors to write")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = load_mnist(args.data_dir / "t10k-images-idx3-ubyte.gz")
    labels = load_mnist_labels(args.data_dir / "t10k-labels-idx1-ubyte.gz")
    start = time.perf_counter()
    model = train(images[:NUM_TRAIN], labels[:NUM_TRAIN], epochs=args.epochs, seed=args.seed)
    seconds = time.perf_counter() - start
    held_out = accuracy(model, images[NUM_TRAIN:], labels[NUM_TRAIN:])
    info = {
        "heldout_accuracy": held_out,
        "heldout": f"t10k images {NUM_TRAIN}..{images.shape[0] - 1}",
        "train": f"t10k images 0..{NUM_TRAIN - 1}",
        "train_accuracy": accuracy(model, images[:NUM_TRAIN], labels[:NUM_TRAIN]),
        "epochs": args.epochs,
        "seed": args.seed,
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    save_classifier(args.out, model, info)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
