"""Batched workflows: seeds, batch-size invariance, closed-form reconstruction, latents files."""

from __future__ import annotations

import math

import pytest
import torch

import ddim
from ddim import workflows
from ddim.formats.latents import load_latents, save_latents
from ddim.noise import per_sample_randn, seeded_latents

SHAPE = (3, 4, 4)
Opts = workflows.SamplerOptions


class GaussianEps(torch.nn.Module):
    """The exact eps of N(0, I) data: ``sqrt(1 - a_t) x_t``; DDIM steps are then linear."""

    def __init__(self, sched: ddim.NoiseSchedule) -> None:
        super().__init__()
        self.register_buffer("sigma", (1 - sched.alpha_bar).sqrt().float())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.sigma[t].view(-1, 1, 1, 1) * x


def test_model_calls_skips_repeated_timesteps(sched) -> None:
    assert ddim.model_calls(sched, 10, "uniform") == 10
    quad = sched.timesteps(200, "quad")
    assert ddim.model_calls(sched, 200, "quad") == len(set(quad.tolist())) < 200


def test_generate_is_batch_size_invariant_and_seeded_per_image(sched, eps_model) -> None:
    kwargs = {"options": workflows.SamplerOptions(steps=5, eta=0.7), "seed": 11}
    full = workflows.generate(eps_model, sched, 5, SHAPE, batch_size=5, **kwargs)
    split = workflows.generate(eps_model, sched, 5, SHAPE, batch_size=2, **kwargs)
    torch.testing.assert_close(split, full, atol=0, rtol=0)
    gens = ddim.seeded_generators(11, 5)
    x_T = per_sample_randn(gens, SHAPE, dtype=torch.float32, device="cpu")
    direct = ddim.sample(eps_model, x_T, sched, steps=5, eta=0.7, generators=gens)
    torch.testing.assert_close(full, direct, atol=0, rtol=0)
    third = workflows.generate(eps_model, sched, 1, SHAPE, batch_size=1, **{**kwargs, "seed": 13})
    torch.testing.assert_close(third[0], full[2], atol=0, rtol=0)
    assert full.std() > 0.1


def test_generate_merges_trajectories(sched, eps_model) -> None:
    x0, traj = workflows.generate(
        eps_model, sched, 3, SHAPE, batch_size=2, options=Opts(steps=4), return_trajectory=True
    )
    assert traj.timesteps == [750, 500, 250, 0]
    assert len(traj.xs) == 5 and len(traj.x0_preds) == 4
    assert all(x.shape == (3, *SHAPE) for x in traj.xs + traj.x0_preds)
    torch.testing.assert_close(traj.xs[-1], x0, atol=0, rtol=0)
    torch.testing.assert_close(traj.xs[0], seeded_latents([0, 1, 2], SHAPE)[0])


def test_seed_latent_is_image_zero_of_that_seed(sched, eps_model) -> None:
    z, _ = seeded_latents([4, 9], SHAPE)
    assert z.shape == (2, *SHAPE)
    expected = workflows.decode(eps_model, sched, z, options=Opts(steps=5))
    torch.testing.assert_close(
        workflows.generate(eps_model, sched, 1, SHAPE, seed=9, options=Opts(steps=5))[0],
        expected[1],
    )


def test_reconstruction_matches_the_closed_form(sched) -> None:
    """For eps = sqrt(1 - a_t) x every step is linear in x. A decoding step t -> t' scales
    x by ``sqrt(a a') + sqrt((1 - a)(1 - a'))``; an encoding step t' -> t, which queries
    the model at ``(x_t', t)``, by ``sqrt(a / a') (1 - sqrt((1 - a)(1 - a'))) + 1 - a``.
    So encode -> decode scales x by the product ``c`` of all of them, and the [0, 1]-scale
    MSE is ``mean(((1 - c) x / 2) ** 2)``."""
    model = GaussianEps(sched)
    x0 = torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    steps = 20
    ts = sched.timesteps(steps).tolist()
    c = 1.0
    for t, t_prev in zip(ts, ts[1:] + [-1], strict=True):
        a, a_prev = sched.alpha_bar_at(t), sched.alpha_bar_at(t_prev)
        root = math.sqrt((1 - a) * (1 - a_prev))
        c *= math.sqrt(a * a_prev) + root
        c *= math.sqrt(a / a_prev) * (1 - root) + 1 - a
    result = workflows.reconstruct(model, sched, x0, options=Opts(steps=steps), batch_size=2)
    torch.testing.assert_close(result.images, c * x0, atol=1e-5, rtol=0)
    expected_mse = (((1 - c) * x0.double() / 2) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(result.mse, expected_mse, atol=1e-9, rtol=1e-4)
    assert 0.98 < c < 0.995 and 1e-6 < result.mse.max() < 1e-4
    encoded = workflows.encode(model, sched, x0, options=Opts(steps=steps), batch_size=3)
    torch.testing.assert_close(result.latents, encoded, atol=0, rtol=0)


def test_per_dim_mse_is_on_the_unit_pixel_scale() -> None:
    x = torch.full((2, 1, 2, 2), -1.0)
    y = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 0.0)])
    assert workflows.per_dim_mse(x, y).tolist() == [1.0, 0.25]


def test_interpolation_latents_lines_and_grids() -> None:
    z, _ = seeded_latents([1, 2, 3, 4], SHAPE)
    line = workflows.interpolation_latents(z[:2], 5)
    assert line.shape == (5, *SHAPE)
    torch.testing.assert_close(line[0], z[0])
    torch.testing.assert_close(line[-1], z[1])
    torch.testing.assert_close(line[2], ddim.slerp(z[0], z[1], 0.5))
    grid = workflows.interpolation_latents(z, 3)
    assert grid.shape == (9, *SHAPE)
    for index, corner in zip((0, 2, 6, 8), z, strict=True):
        torch.testing.assert_close(grid[index], corner)
    with pytest.raises(ValueError, match="2 or 4 latents"):
        workflows.interpolation_latents(z[:3], 3)
    with pytest.raises(ValueError, match="at least 2 frames"):
        workflows.interpolation_latents(z[:2], 1)


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_latents_files_round_trip(tmp_path, suffix) -> None:
    z, _ = seeded_latents([0, 1], SHAPE)
    save_latents(tmp_path / f"z{suffix}", z, ["a.png", "b.png"])
    back, sources = load_latents(tmp_path / f"z{suffix}")
    torch.testing.assert_close(back, z, atol=0, rtol=0)
    assert sources == ["a.png", "b.png"]
    with pytest.raises(ValueError, match="must end with .npz or .pt"):
        save_latents(tmp_path / "z.txt", z, ["a", "b"])
    with pytest.raises(ValueError, match="1 sources for 2 latents"):
        save_latents(tmp_path / f"y{suffix}", z, ["a"])
