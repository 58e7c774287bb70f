"""``python -m ddim.train.noisy_classifier MNIST_DIR --out FILE``: train the noise-aware
classifier of classifier guidance (:class:`~ddim.models.noisy_classifier.NoisyClassifier`).

Each step draws a batch of the first 9,000 MNIST test images (shifted by up to two pixels),
a timestep per image uniform in ``0 .. T-1`` and noises them with the forward process of
the bundled model's schedule (:func:`ddim.schedule.q_sample`); the loss is the
cross-entropy of the labels. The held-out accuracy on the last 1,000 images at several
noise levels is recorded in the file's metadata.
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
from ddim.models.classifier import NUM_TRAIN
from ddim.models.noisy_classifier import FORMAT, NoisyClassifier, betas_digest
from ddim.schedule import NoiseSchedule, q_sample
from ddim.train.classifier import random_shift

REPORT_TIMESTEPS = (0, 200, 400, 600, 800, 999)


def train(
    images: Tensor,
    labels: Tensor,
    sched: NoiseSchedule,
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 2e-3,
    max_shift: int = 2,
    seed: int = 0,
    log: bool = True,
) -> NoisyClassifier:
    """Adam with a cosine learning-rate decay on the cross-entropy of noised images."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = NoisyClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    alpha_bar, T = sched.alpha_bar, sched.num_timesteps
    model.train()
    for step in range(1, steps + 1):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=g)
        x0 = random_shift(images[idx], max_shift, g) if max_shift else images[idx]
        t = torch.randint(0, T, (batch_size,), generator=g)
        x_t = q_sample(x0, t, torch.randn(x0.shape, generator=g), alpha_bar)
        loss = F.cross_entropy(model(x_t, t), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay.step()
        if log and step % 250 == 0:
            print(f"step {step}/{steps}: loss {loss.item():.4f}", flush=True)
    return model.eval()


@torch.no_grad()
def accuracy_at(
    model: NoisyClassifier, images: Tensor, labels: Tensor, sched: NoiseSchedule, t: int
) -> float:
    """Held-out accuracy on ``images`` noised to timestep ``t`` (noise seeded by ``t``)."""
    g = torch.Generator().manual_seed(t)
    ts = torch.full((images.shape[0],), t)
    x_t = q_sample(images, ts, torch.randn(images.shape, generator=g), sched.alpha_bar)
    return (model(x_t, ts).argmax(1) == labels).double().mean().item()


def save_noisy_classifier(
    path: str | os.PathLike[str], model: NoisyClassifier, sched: NoiseSchedule, info: dict[str, Any]
) -> None:
    """Write the weights and ``info`` (with the digest of ``sched``'s betas) atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    info = {**info, "betas_sha": betas_digest(sched)}
    metadata = {"format": FORMAT, "info": json.dumps(info, sort_keys=True)}
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


def main(argv: list[str] | None = None) -> None:
    """Train on the first 9,000 images of ``DATA_DIR``'s t10k files; test on the last 1,000."""
    parser = argparse.ArgumentParser(
        prog="python -m ddim.train.noisy_classifier", description=__doc__
    )
    parser.add_argument("data_dir", type=Path, help="folder with the t10k-*-ubyte.gz files")
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors to write")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sched = NoiseSchedule.linear(1000, 1e-4, 0.02)  # the bundled models' schedule
    images = load_mnist(args.data_dir / "t10k-images-idx3-ubyte.gz")
    labels = load_mnist_labels(args.data_dir / "t10k-labels-idx1-ubyte.gz")
    start = time.perf_counter()
    model = train(images[:NUM_TRAIN], labels[:NUM_TRAIN], sched, args.steps, seed=args.seed)
    seconds = time.perf_counter() - start
    held = images[NUM_TRAIN:], labels[NUM_TRAIN:]
    info = {
        "heldout_accuracy_at_t": {t: accuracy_at(model, *held, sched, t) for t in REPORT_TIMESTEPS},
        "heldout": f"t10k images {NUM_TRAIN}..{images.shape[0] - 1}",
        "train": f"t10k images 0..{NUM_TRAIN - 1}",
        "schedule": "linear, T = 1000, beta 1e-4 .. 0.02",
        "steps": args.steps,
        "seed": args.seed,
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    save_noisy_classifier(args.out, model, sched, info)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
