"""The paper's tables and figures on an exact oracle, and evaluation sharded over processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import ddim
from ddim.distributed import shard
from ddim.eval import experiments, reports
from ddim.eval.metrics import FeatureStats, dataset_stats, pixel_features
from ddim.models.oracle import GaussianMixture
from ddim.noise import seeded_latents
from ddim.workflows import SamplerOptions

SCHED = ddim.NoiseSchedule.linear(1000)
SHAPE = (1, 4, 4)


def image_mixture() -> GaussianMixture:
    """Three 'digit classes' in [-1, 1]: fixed 4x4 patterns with a little noise."""
    means = torch.full((3, *SHAPE), -0.8, dtype=torch.float64)
    means[0, 0, :, 1] = 0.8  # a vertical bar
    means[1, 0, 1, :] = 0.8  # a horizontal bar
    means[2, 0, [0, 1, 2, 3], [0, 1, 2, 3]] = 0.8  # a diagonal
    return GaussianMixture(means, 0.1, torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64), SCHED)


def nearest_mean(mix: GaussianMixture):
    def label(x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x.reshape(x.shape[0], -1).double(), mix.centers)
        return d.argmin(dim=1)

    return label


def test_shard_covers_every_index_once():
    parts = [shard(10, r, 3) for r in range(3)]
    assert [list(p) for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    with pytest.raises(ValueError, match="cannot split 2 samples over 3"):
        shard(2, 0, 3)


def test_table1_on_an_oracle(tmp_path):
    mix = image_mixture()
    ref = dataset_stats(pixel_features, mix.sample(4000, torch.Generator().manual_seed(0)))
    rows = experiments.table1(
        mix, SCHED, [5, 50], [0.0, 1.0], True, n=300, batch_size=150,
        feature_fn=pixel_features, ref_stats=ref, seed=0, shape=SHAPE,
    )  # fmt: skip
    fd = {(r.label, r.steps): r.fd for r in rows}
    assert [r.label for r in rows] == ["η = 0"] * 2 + ["η = 1"] * 2 + ["σ̂"] * 2
    assert fd["η = 0", 50] < 0.02 < 0.1 < fd["η = 0", 5]
    assert fd["σ̂", 5] > fd["η = 1", 5] > fd["η = 0", 5]

    paths = experiments.write_table1(rows, tmp_path, {"title": "oracle", "n": 300})
    assert [p.name for p in paths] == ["table1.md", "table1.json", "table1.png"]
    md = (tmp_path / "table1.md").read_text()
    assert "| | S = 5 | S = 50 |" in md and "| σ̂ |" in md
    data = json.loads((tmp_path / "table1.json").read_text())
    assert data["meta"]["n"] == 300 and len(data["rows"]) == 6
    assert data["rows"][0]["fd"] == pytest.approx(fd["η = 0", 5])
    assert Image.open(tmp_path / "table1.png").size == (660, 480)


def test_fd_markdown_layout():
    rows = [
        reports.Row(10, 0.0, "ddim", 1.23456, 0.1),
        reports.Row(100, 0.0, "ddim", 0.5, 0.1),
        reports.Row(10, None, "ddpm-large", 99.0, 0.1),
    ]
    assert reports.fd_markdown(rows, digits=3) == (
        "| | S = 10 | S = 100 |\n|---|---:|---:|\n| η = 0 | 1.23 | 0.5 |\n| σ̂ | 99 |  |\n"
    )
    with pytest.raises(ValueError, match="etas must be >= 0"):
        reports.settings([-0.5], False)


def test_table2_reconstruction_error_falls_with_steps(tmp_path):
    mix = image_mixture()
    images = mix.sample(16, torch.Generator().manual_seed(1)).float().clamp(-1, 1)
    rows = experiments.table2(mix, SCHED, images, [10, 50, 200], batch_size=8,
                              solvers=("ddim", "bdia"))  # fmt: skip
    mse = rows["ddim"]
    assert list(mse) == [10, 50, 200]
    assert mse[10] > mse[50] > mse[200] > 0
    assert mse[200] < 1e-3
    assert all(rows["ddim, clamped"][s] <= mse[s] for s in mse)  # the images lie in [-1, 1]
    assert max(rows["bdia"].values()) < 1e-9  # float32 rounding: exact
    experiments.write_table2(rows, tmp_path, {"n": 16})
    table = (tmp_path / "table2.md").read_text()
    assert table.startswith("| S | 10 | 50 | 200 |") and "\n| bdia, clamped | " in table
    assert json.loads((tmp_path / "table2.json").read_text())["mse"]["ddim"]["10"] == mse[10]


def test_consistency_figure(tmp_path):
    mix = image_mixture()
    agreement = experiments.consistency_figure(
        mix, SCHED, [5, 20, 100], nearest_mean(mix), tmp_path, shape=SHAPE, n=64, show=6,
        ref_steps=100,
    )  # fmt: skip
    assert agreement[100] == 1.0
    assert 0.8 <= agreement[5] <= agreement[20] <= 1.0
    saved = json.loads((tmp_path / "consistency.json").read_text())
    assert saved["agreement"]["5"] == agreement[5]
    # 3 rows of 6 images of 4 x 4 pixels with 2-pixel padding
    assert Image.open(tmp_path / "consistency.png").size == (6 * 6 + 2, 3 * 6 + 2)


def test_interpolation_figure(tmp_path):
    mix = image_mixture()
    images = experiments.interpolation_figure(
        mix, SCHED, tmp_path / "interp.png", shape=SHAPE, frames=4, options=SamplerOptions(steps=20)
    )
    assert images.shape == (16, *SHAPE)
    corners, _ = seeded_latents(range(4), SHAPE)
    first = ddim.sample(mix, corners[:1], SCHED, steps=20)
    torch.testing.assert_close(images[:1], first)
    assert Image.open(tmp_path / "interp.png").size == (4 * 6 + 2, 4 * 6 + 2)


WORKER = """
import sys, torch
import ddim
from ddim.eval.experiments import sample_stats
from ddim.eval.metrics import pixel_features
from ddim.distributed import init_from_env, world

torch.set_num_threads(1)
init_from_env("cpu")
sys.path.insert(0, sys.argv[2])
from test_experiments import SCHED, SHAPE, image_mixture
from ddim.workflows import SamplerOptions

stats = sample_stats(
    image_mixture(), SCHED, pixel_features, shape=SHAPE, n=10, batch_size=3, seed=5,
    options=SamplerOptions(steps=5, eta=0.5),
)
if world()[0] == 0:
    stats.save(sys.argv[1])
"""


@pytest.mark.slow
def test_two_processes_give_the_statistics_of_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    here = os.path.dirname(__file__)
    result = subprocess.run(
        [*cmd, str(script), str(tmp_path / "s.npz"), here],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    two = FeatureStats.load(tmp_path / "s.npz")
    one = experiments.sample_stats(
        image_mixture(), SCHED, pixel_features, shape=SHAPE, n=10, batch_size=4, seed=5,
        options=SamplerOptions(steps=5, eta=0.5),
    )  # fmt: skip
    assert two.n == one.n == 10
    np.testing.assert_allclose(two.mu, one.mu, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(two.sigma, one.sigma, rtol=1e-6, atol=1e-9)
    assert one.frechet_distance(two) == pytest.approx(0.0, abs=1e-6)
