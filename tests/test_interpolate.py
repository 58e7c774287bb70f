"""slerp (paper App. D.5) and the 2-D interpolation grid."""

from __future__ import annotations

import math

import pytest
import torch

import ddim


def test_slerp_between_orthogonal_unit_vectors_by_hand() -> None:
    z0, z1 = (
        torch.tensor([1.0, 0.0], dtype=torch.float64),
        torch.tensor([0.0, 1.0], dtype=torch.float64),
    )
    mid = ddim.slerp(z0, z1, 0.5)
    torch.testing.assert_close(mid, torch.tensor([math.sqrt(0.5)] * 2, dtype=torch.float64))
    third = ddim.slerp(z0, z1, 1 / 3)  # theta = pi/2, so the point at angle pi/6
    torch.testing.assert_close(
        third, torch.tensor([math.cos(math.pi / 6), 0.5], dtype=torch.float64)
    )


def test_slerp_endpoints_norm_and_batch_of_alphas() -> None:
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(3, 8, 8, generator=g), torch.randn(3, 8, 8, generator=g)
    alphas = torch.linspace(0, 1, 7)
    path = ddim.slerp(z0, z1, alphas)
    assert path.shape == (7, 3, 8, 8)
    torch.testing.assert_close(path[0], z0)
    torch.testing.assert_close(path[-1], z1)
    # Gaussian latents of this size are nearly orthogonal and of equal norm: slerp keeps the
    # norm where linear interpolation would shrink it by about sqrt(2) in the middle.
    norms = path.flatten(1).norm(dim=1) / z0.norm()
    assert norms.min() > 0.9
    assert ((z0 + z1) / 2).norm() / z0.norm() < 0.8


def test_slerp_of_parallel_latents_is_linear() -> None:
    z = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(ddim.slerp(z, 2 * z, 0.5), 1.5 * z)


def test_slerp_errors() -> None:
    with pytest.raises(ValueError, match="one shape"):
        ddim.slerp(torch.zeros(2), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="1-D tensor"):
        ddim.slerp(torch.ones(2), torch.ones(2), torch.zeros(2, 2))


def test_slerp_grid_corners_and_edges() -> None:
    corners = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = ddim.slerp_grid(corners, rows=4, cols=6)
    assert grid.shape == (4, 6, 5)
    torch.testing.assert_close(grid[0, 0], corners[0])
    torch.testing.assert_close(grid[0, -1], corners[1])
    torch.testing.assert_close(grid[-1, 0], corners[2])
    torch.testing.assert_close(grid[-1, -1], corners[3])
    torch.testing.assert_close(
        grid[0], ddim.slerp(corners[0], corners[1], torch.linspace(0, 1, 6, dtype=torch.float64))
    )
    with pytest.raises(ValueError, match="4 corner"):
        ddim.slerp_grid(corners[:3], 2, 2)
