"""The start of an exactly invertible sampler: two tensors, not one.

EDICT (Wallace et al. 2023) walks two coupled sequences ``(x, y)`` and BDIA (Zhang et al.
2023) a two-step recursion over ``(z_k, z_{k+1})``, so the state that makes their encoding
exact is a pair. :class:`CoupledLatent` is that pair, named by the solver it belongs to:
:func:`ddim.invert` returns it for those solvers and :func:`ddim.sample` starts from it.

Interpolating two such latents means interpolating both halves with the same weight. The
pair of an image is not a Gaussian draw: its halves differ by what the coupling added, so
a point between two pairs decodes to a blend of both images' whole trajectories, exact at
the ends (weights 0 and 1 give the images back) but no longer a sample of the model's law
in between, unlike the slerp of two DDIM latents ``x_T`` (which are close to standard
normal).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddim.names import EXACT_SOLVERS as COUPLED_SOLVERS


@dataclass(frozen=True)
class CoupledLatent:
    """``solver``'s whole state at the top of the plan: EDICT's ``(x_T, y_T)``; BDIA's
    ``(z_0, z_1)`` at the plan's first two points."""

    solver: str
    first: torch.Tensor
    second: torch.Tensor

    def __post_init__(self) -> None:
        if self.solver not in COUPLED_SOLVERS:
            raise ValueError(
                f"a coupled latent belongs to one of {', '.join(COUPLED_SOLVERS)}, "
                f"not {self.solver!r}"
            )
        if self.first.shape != self.second.shape:
            raise ValueError(
                f"the two halves of a coupled latent differ in shape: "
                f"{tuple(self.first.shape)} and {tuple(self.second.shape)}"
            )

    @property
    def shape(self) -> torch.Size:
        """The shape of one half, ``(B, ...)``, as a latent tensor's."""
        return self.first.shape

    @property
    def device(self) -> torch.device:
        """The device the halves are on (the first half's)."""
        return self.first.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the halves (the first half's)."""
        return self.first.dtype

    def __getitem__(self, rows: slice) -> CoupledLatent:
        """Rows ``rows`` of both halves (a batch of a batched workflow)."""
        return CoupledLatent(self.solver, self.first[rows], self.second[rows])

    def to(self, *args: object, **kwargs: object) -> CoupledLatent:
        """Both halves moved or cast as ``Tensor.to`` does."""
        return CoupledLatent(self.solver, self.first.to(*args, **kwargs),
                             self.second.to(*args, **kwargs))  # fmt: skip


def start_of(x_T: torch.Tensor | CoupledLatent, solver: str) -> torch.Tensor | CoupledLatent:
    """``x_T`` checked against ``solver``: a coupled latent only for its own solver."""
    if isinstance(x_T, CoupledLatent) and x_T.solver != solver:
        raise ValueError(
            f"this state is {x_T.solver}'s; sample or encode it with solver {x_T.solver!r}, "
            f"not {solver!r}"
        )
    return x_T


def concatenate(parts: list[torch.Tensor] | list[CoupledLatent]) -> torch.Tensor | CoupledLatent:
    """Batches of latents joined along the batch axis (both halves of coupled ones)."""
    if parts and isinstance(parts[0], CoupledLatent):
        first = torch.cat([p.first for p in parts])  # type: ignore[union-attr]
        return CoupledLatent(parts[0].solver, first, torch.cat([p.second for p in parts]))
    return torch.cat(parts)  # type: ignore[arg-type]
