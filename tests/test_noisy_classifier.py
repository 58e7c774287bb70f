"""The noise-aware classifier of classifier guidance: its shapes, its training on noised
images (on generated two-class data), and the schedule check when it is loaded."""

from __future__ import annotations

import pytest
import torch

import ddim
from ddim.models.noisy_classifier import (
    NoisyClassifier,
    load_noisy_classifier,
    noisy_classifier_info,
)
from ddim.train.noisy_classifier import accuracy_at, save_noisy_classifier, train

SCHED = ddim.NoiseSchedule.linear(1000, 1e-4, 0.02)


def two_classes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits-like 28 x 28 images: class 0 is bright in its top half, class 1 in its bottom."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.full((n, 1, 28, 28), -1.0) + 0.1 * torch.randn(n, 1, 28, 28, generator=g)
    for i, label in enumerate(y.tolist()):
        rows = slice(2, 12) if label == 0 else slice(16, 26)
        x[i, 0, rows, 6:22] = 1.0
    return x.clamp(-1, 1), y


def test_logits_have_one_column_per_class_and_bad_shapes_are_named() -> None:
    model = NoisyClassifier().eval()
    logits = model(torch.zeros(3, 1, 28, 28), torch.tensor([0, 500, 999]))
    assert logits.shape == (3, 10) and NoisyClassifier.num_classes == 10
    with pytest.raises(ValueError, match=r"needs \(B, 1, 28, 28\)"):
        model(torch.zeros(3, 1, 8, 8), torch.zeros(3, dtype=torch.long))


@pytest.mark.slow
def test_training_on_noised_images_learns_the_classes_at_low_noise() -> None:
    x, y = two_classes(256, 0)
    model = train(x, y, SCHED, steps=60, batch_size=32, max_shift=1, log=False)
    held_x, held_y = two_classes(200, 1)
    assert accuracy_at(model, held_x, held_y, SCHED, 0) > 0.95
    assert accuracy_at(model, held_x, held_y, SCHED, 200) > 0.9
    # at t = 999 the image is nearly pure noise: no better than guessing by much
    assert accuracy_at(model, held_x, held_y, SCHED, 999) < 0.8


def test_saved_classifier_round_trips_and_refuses_another_schedule(tmp_path) -> None:
    torch.manual_seed(0)
    model = NoisyClassifier().eval()
    save_noisy_classifier(tmp_path / "c.safetensors", model, SCHED, {"steps": 1})
    assert noisy_classifier_info(tmp_path / "c.safetensors")["steps"] == 1
    back = load_noisy_classifier(tmp_path / "c.safetensors", sched=SCHED)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 300])
    assert torch.equal(back(x, t), model(x, t))
    with pytest.raises(ValueError, match="trained on another noise schedule"):
        load_noisy_classifier(tmp_path / "c.safetensors", sched=ddim.NoiseSchedule.cosine(1000))
    with pytest.raises(FileNotFoundError, match="python -m ddim.train.noisy_classifier"):
        load_noisy_classifier(tmp_path / "missing.safetensors")
