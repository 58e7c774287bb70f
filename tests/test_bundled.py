"""The bundled MNIST model: it loads from its name alone and draws legible digits of every class."""

from __future__ import annotations

import importlib.resources

import pytest
import torch

import ddim
from ddim.formats.checkpoint import read_metadata
from ddim.models.classifier import load_classifier


def test_bundled_model_is_small_and_describes_itself() -> None:
    asset = importlib.resources.files("ddim") / "assets" / "mnist.safetensors"
    assert asset.is_file()
    assert asset.stat().st_size < 20 * 2**20
    meta = read_metadata("mnist")
    assert meta["data_shape"] == [1, 28, 28]
    assert meta["step"] >= 10_000
    model, sched = ddim.load_pretrained("mnist")
    assert not model.training
    assert sched.num_timesteps == 1000
    assert sched.betas[0].item() == 1e-4 and sched.betas[-1].item() == 0.02


@pytest.mark.slow
def test_fifty_ddim_steps_draw_confident_digits_of_all_ten_classes() -> None:
    model, sched = ddim.load_pretrained("mnist")
    gens = ddim.seeded_generators(0, 100)
    x_T = torch.stack([torch.randn(1, 28, 28, generator=g) for g in gens])
    x0 = ddim.sample(model, x_T, sched, steps=50).clamp(-1, 1)
    with torch.no_grad():
        probs = load_classifier()(x0).softmax(dim=1)
    confidence, labels = probs.max(dim=1)
    # The held-out classifier (99.6% accurate) recognises the samples as digits...
    assert (confidence > 0.9).float().mean() > 0.75
    # ...and every class turns up among 100 samples.
    assert set(labels.tolist()) == set(range(10))
