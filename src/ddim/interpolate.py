"""Spherical interpolation of latents (paper App. D.5) and interpolation grids."""

from __future__ import annotations

import torch


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation between two latents ``x_T``::

        theta = arccos(<z0, z1> / (|z0| |z1|))
        z     = sin((1 - alpha) theta) / sin(theta) * z0 + sin(alpha theta) / sin(theta) * z1

    The angle is taken between the whole tensors, as in the paper. ``alpha`` is a float
    (the result has ``z0``'s shape) or a 1-D tensor of ``K`` values (the result is
    ``(K, *z0.shape)``). Parallel latents fall back to linear interpolation.
    """
    if z0.shape != z1.shape:
        raise ValueError(
            f"slerp needs latents of one shape, got {tuple(z0.shape)} and {tuple(z1.shape)}"
        )
    a = torch.as_tensor(alpha, dtype=z0.dtype, device=z0.device)
    if a.ndim > 1:
        raise ValueError(f"alpha must be a float or a 1-D tensor, got shape {tuple(a.shape)}")
    a = a.reshape(-1, *([1] * z0.ndim))
    cos = (z0 * z1).sum() / (z0.norm() * z1.norm())
    theta = torch.acos(cos.clamp(-1, 1))
    sin = torch.sin(theta)
    if sin.abs() < 1e-6:
        out = (1 - a) * z0 + a * z1
    else:
        out = (torch.sin((1 - a) * theta) * z0 + torch.sin(a * theta) * z1) / sin
    return out[0] if torch.as_tensor(alpha).ndim == 0 else out


def slerp_grid(corners: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The paper's 2-D interpolation: slerp twice between four corner latents.

    ``corners`` is ``(4, *shape)`` ordered top-left, top-right, bottom-left, bottom-right;
    the result is ``(rows, cols, *shape)``: each column slerps between the slerped top and
    bottom edges.
    """
    if corners.shape[0] != 4:
        raise ValueError(f"slerp_grid needs 4 corner latents, got {corners.shape[0]}")
    if rows < 2 or cols < 2:
        raise ValueError(
            f"an interpolation grid needs at least 2 rows and 2 columns, got {rows}x{cols}"
        )
    across = torch.linspace(0, 1, cols, dtype=corners.dtype)
    down = torch.linspace(0, 1, rows, dtype=corners.dtype)
    top = slerp(corners[0], corners[1], across)
    bottom = slerp(corners[2], corners[3], across)
    return torch.stack([slerp(top[j], bottom[j], down) for j in range(cols)], dim=1)
