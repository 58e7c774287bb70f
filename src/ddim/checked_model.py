"""Running an ε-model inside a sampler: the call with its checks.

:class:`CheckedModel` runs each call under the chosen autocast, checks the output's shape at
once and its finiteness on the device, and reports a non-finite step once, after the loop,
so a step never waits on the device. :data:`Model` is the type of every model the library
calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ddim.precision import autocast, choose

#: A network as every sampler, workflow and wrapper calls it: ``model(x_t, t)``, or
#: ``model(x_t, t, y)`` for a class-conditional one.
Model = Callable[..., torch.Tensor]


class CheckedModel:
    """``model`` with its output checked: the shape at once, finiteness after the loop.

    Each call runs under the autocast of ``precision`` (:mod:`ddim.precision`) and records,
    on the device, whether the output was finite; :meth:`raise_if_nonfinite` reads all
    records with one device sync and names the first step that was not.
    """

    def __init__(
        self,
        model: Model,
        timesteps: Sequence[int],
        batch: int,
        device: torch.device,
        precision: str = "fp32",
    ):
        self.model = model
        self.precision = choose(precision, device)[0]
        self.device = torch.device(device)
        t_all = torch.tensor(list(timesteps), dtype=torch.long, device=device)
        self._t = [t_all[i].expand(batch) for i in range(len(timesteps))]
        self._flags: list[tuple[int, int, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, i: int, t: int) -> torch.Tensor:
        """``eps`` at step ``i`` (timestep ``t``), in the dtype of ``x``."""
        with autocast(self.precision, self.device):
            eps = self.model(x, self._t[i])
        if not isinstance(eps, torch.Tensor) or eps.shape != x.shape:
            shape = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
            raise ValueError(
                f"model returned {shape} at step {i} (t={t}); "
                f"expected a tensor of shape {tuple(x.shape)}"
            )
        eps = eps.to(x.dtype)
        self._flags.append((i, t, torch.isfinite(eps).all()))
        return eps

    def raise_if_nonfinite(self) -> None:
        """A ValueError naming the first step whose model output was not finite."""
        if not self._flags:
            return
        finite = torch.stack([f for _, _, f in self._flags]).cpu()
        if not finite.all():
            i, t, _ = self._flags[int((~finite).nonzero()[0, 0])]
            raise ValueError(f"model returned non-finite values at step {i} (t={t})")
