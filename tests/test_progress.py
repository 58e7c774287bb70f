"""A long FD run killed part-way resumes from the batches it kept, bit-identically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ddim
from ddim.eval.experiments import sample_stats
from ddim.eval.metrics import FeatureStats, pixel_features
from ddim.eval.progress import BatchStore, weights_digest
from ddim.models.oracle import GaussianMixture
from ddim.models.unet import UNet, UNetConfig
from ddim.speed import for_inference
from ddim.workflows import SamplerOptions

SCHED = ddim.NoiseSchedule.linear(1000)
SHAPE = (1, 3, 3)
OPTIONS = SamplerOptions(steps=8, eta=0.5)


def mixture() -> GaussianMixture:
    means = torch.stack([torch.full(SHAPE, -0.5), torch.full(SHAPE, 0.6)]).double()
    return GaussianMixture(means, 0.2, torch.tensor([0.5, 0.5], dtype=torch.float64), SCHED)


class Killed(Exception):
    """Stands for SIGKILL arriving while a batch is being sampled."""


def counting_features(fail_at: int | None = None):
    """``pixel_features`` that counts its calls (one per batch) and fails at call ``fail_at``."""
    calls = []

    def features(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        if len(calls) == fail_at:
            raise Killed
        return pixel_features(x)

    return features, calls


def stats_of(feature_fn, store: BatchStore | None = None) -> FeatureStats:
    return sample_stats(
        mixture(), SCHED, feature_fn, shape=SHAPE, n=10, batch_size=3, seed=7, options=OPTIONS,
        store=store,
    )  # fmt: skip


def test_a_killed_run_resumes_with_the_numbers_of_an_unbroken_one(tmp_path):
    whole = stats_of(pixel_features)
    store = BatchStore(tmp_path / "cell", "model-a")
    first, calls = counting_features(fail_at=3)
    with pytest.raises(Killed):
        stats_of(first, store)
    kept = sorted(p.name for p in (tmp_path / "cell").iterdir())
    assert kept == ["0000000+3.npz", "0000003+3.npz"]  # samples 0-5, nothing half-written

    second, calls = counting_features()
    resumed = stats_of(second, store)
    assert calls == [3, 1]  # only samples 6-8 and 9 were drawn again
    assert resumed.n == whole.n == 10
    assert np.array_equal(resumed.mu, whole.mu) and np.array_equal(resumed.sigma, whole.sigma)

    third, calls = counting_features()
    again = stats_of(third, store)
    assert calls == [] and np.array_equal(again.sigma, whole.sigma)


def test_batches_of_another_run_are_refused(tmp_path):
    stats_of(pixel_features, BatchStore(tmp_path, "model-a"))
    with pytest.raises(ValueError, match=r"0000000\+3.npz was written by a different run"):
        stats_of(pixel_features, BatchStore(tmp_path, "model-b"))


def test_each_cell_has_its_own_folder_and_key(tmp_path):
    store = BatchStore(tmp_path, "model-a")
    cell = store.cell("S8-eta0.5", OPTIONS)
    assert cell.folder == tmp_path / "S8-eta0.5"
    assert cell.key == f"model-a|{OPTIONS!r}" and "eta=0.5" in cell.key
    assert store.cell("S8-eta0.5", SamplerOptions(steps=8, eta=0.2)).key != cell.key


def test_the_weights_digest_ignores_layout_and_compile_wrappers():
    config = UNetConfig(
        in_channels=1, out_channels=1, ch=32, ch_mult=(1,), num_res_blocks=1,
        attn_resolutions=(), dropout=0.0, image_size=8,
    )  # fmt: skip
    torch.manual_seed(0)
    model = UNet(config).eval()
    digest = weights_digest(model)
    assert len(digest) == 64
    assert weights_digest(for_inference(model, channels_last=True)) == digest
    assert weights_digest(for_inference(model, channels_last=True, compile=True)) == digest
    with torch.no_grad():
        next(model.parameters())[0].add_(1e-6)
    assert weights_digest(model) != digest
