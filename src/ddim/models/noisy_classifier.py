"""A noise-aware MNIST classifier ``c(x_t, t) -> logits`` for classifier guidance.

Classifier guidance (Dhariwal & Nichol 2021) needs ``grad_x log p(y | x_t)`` at every noise
level, so the classifier sees noised images ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` and
their timestep, like the ε-model: each conv stage adds a projection of the sinusoidal
timestep embedding (:func:`ddim.models.unet.timestep_embedding`) before its GroupNorm and
SiLU. The schedule it was trained on is stored with it, and :func:`load_noisy_classifier`
refuses to guide a model of another schedule.

The bundled weights (``ddim/assets/mnist_noisy_classifier.safetensors``) come from::

    python -m ddim.train.noisy_classifier ../shared/data/mnist \\
        --out src/ddim/assets/mnist_noisy_classifier.safetensors
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddim import assets
from ddim.models.classifier import read_info
from ddim.models.unet import timestep_embedding
from ddim.schedule import NoiseSchedule

FORMAT = "ddim-noisy-classifier"
ASSET = "mnist_noisy_classifier.safetensors"
WIDTHS = (32, 64, 128)
TEMB = 64


class NoisyClassifier(nn.Module):
    """Three stages (28 -> 14 -> 7 -> 3 pixels) of two 3x3 convs with GroupNorm, SiLU and
    the timestep's embedding added, then a 10-way linear head on the pooled features."""

    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        self.temb = nn.Sequential(nn.Linear(TEMB, TEMB), nn.SiLU(), nn.Linear(TEMB, TEMB))
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.proj = nn.ModuleList()
        c_in = 1
        for width in WIDTHS:
            for _ in range(2):
                self.convs.append(nn.Conv2d(c_in, width, 3, padding=1))
                self.norms.append(nn.GroupNorm(8, width))
                self.proj.append(nn.Linear(TEMB, width))
                c_in = width
        self.head = nn.Linear(WIDTHS[-1], self.num_classes)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Class logits ``(B, 10)`` of ``x_t`` ``(B, 1, 28, 28)`` at timesteps ``t`` ``(B,)``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"the noisy classifier needs (B, 1, 28, 28), got {tuple(x.shape)}")
        emb = self.temb(timestep_embedding(t, TEMB).to(self.head.weight.dtype))
        h = x.to(self.head.weight.dtype)
        for i, (conv, norm, proj) in enumerate(zip(self.convs, self.norms, self.proj, strict=True)):
            h = F.silu(norm(conv(h) + proj(emb)[:, :, None, None]))
            if i % 2 == 1:
                h = F.max_pool2d(h, 2)
        return self.head(h.mean(dim=(2, 3)))


def noisy_classifier_info(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The metadata stored with a noisy classifier (the bundled one by default)."""
    return read_info(_resolve(path), FORMAT, "noisy-classifier")


def load_noisy_classifier(
    path: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    sched: NoiseSchedule | None = None,
) -> NoisyClassifier:
    """An eval-mode noisy classifier (the bundled one by default); with ``sched``, a
    ValueError unless it was trained on that schedule's betas."""
    file = _resolve(path)
    info = noisy_classifier_info(file)
    if sched is not None and info["betas_sha"] != betas_digest(sched):
        raise ValueError(f"{file} was trained on another noise schedule than the model's")
    model = NoisyClassifier()
    model.load_state_dict(safetensors.torch.load_file(str(file)))
    return model.to(device).eval()


def betas_digest(sched: NoiseSchedule) -> str:
    """A short digest of a schedule's float64 betas, to tell schedules apart."""
    return hashlib.sha256(sched.betas.to(torch.float64).numpy().tobytes()).hexdigest()[:16]


def _resolve(path: str | os.PathLike[str] | None) -> Path:
    file = Path(assets.path(ASSET) if path is None else path)
    if not file.is_file():
        raise FileNotFoundError(
            f"noisy classifier {file} is missing; train it with "
            f"`python -m ddim.train.noisy_classifier`"
        )
    return file
