"""The judges of :mod:`ddim.eval.judges` on the sets that a ``ddim eval`` command samples.

Every command that scores samples already passes each batch through a feature function on
its way to the FD. A :class:`Panel` taps that function (:meth:`Panel.tap`): it keeps each
batch, rounded to the uint8 pixels a saved file would hold, under the name of its cell (a
Table 1 cell, a solver at a budget, a guidance strength). When the command ends,
:meth:`Panel.scores` scores every cell with each chosen judge and its 95 % interval, after a
first row of random draws of real images: the floor. :meth:`Panel.write` writes the table
and, if asked, each cell's samples as ``.npz``, so a later judge re-scores them without
sampling again (``ddim eval judge``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ddim.eval.judges import Interval, Spaces, as_json, floor, judge, markdown
from ddim.eval.metrics import FeatureFn
from ddim.formats.atomic import atomic_write_text
from ddim.formats.images import save_npz

Scores = dict[str, dict[str, Interval]]


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Images in ``[-1, 1]`` -> uint8 ``0..255``, rounded as :func:`ddim.formats.images.to_uint8`
    rounds them, keeping the ``(B, C, H, W)`` layout."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``0..255`` -> float32 ``[-1, 1]``."""
    return x.float() / 127.5 - 1


@dataclass
class Panel:
    """The chosen ``judges``, their feature ``spaces``, the reference's features, the
    training images the floor draws from (``floor_draws`` sets; 0: no floor row) and the
    samples of each cell so far."""

    judges: tuple[str, ...]
    spaces: Spaces
    reference: dict[str, np.ndarray]
    train: torch.Tensor
    floor_draws: int = 5
    cells: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        judges: Sequence[str],
        reference: torch.Tensor,
        train: torch.Tensor,
        floor_draws: int = 5,
        device: str | torch.device = "cpu",
    ) -> Panel:
        """A panel that judges against the ``reference`` images, with the PCA basis and the
        floor's draws from the ``train`` images (all ``(N, 1, 28, 28)`` in ``[-1, 1]``)."""
        spaces = Spaces.build(train, device)
        return cls(tuple(judges), spaces, spaces.features(reference), train, floor_draws)

    def add(self, name: str, x: torch.Tensor) -> None:
        """Keep the images ``x`` as (more of) the samples of cell ``name``."""
        self.cells.setdefault(name, []).append(to_pixels(x))

    def tap(self, name: str, feature_fn: FeatureFn) -> FeatureFn:
        """``feature_fn``, which also keeps each batch it is given as cell ``name``'s."""

        def features(x: torch.Tensor) -> torch.Tensor:
            self.add(name, x)
            return feature_fn(x)

        return features

    def samples(self, name: str) -> torch.Tensor:
        """Cell ``name``'s samples as uint8 ``(N, C, H, W)``."""
        return torch.cat(self.cells[name])

    def scores(self) -> Scores:
        """Each cell's score by each judge (rows named ``"<cell> (<n>)"``), after the floor:
        the mean [lowest, highest] of ``floor_draws`` random sets of as many training images
        as the first cell holds."""
        if not self.cells:
            raise ValueError("no samples reached the judges")
        rows: Scores = {}
        n = len(self.samples(next(iter(self.cells))))
        if self.floor_draws:
            rows[f"real images ({n}, {self.floor_draws} draws: mean [min, max])"] = floor(
                self.train, n, self.reference, self.spaces.features, self.judges,
                self.floor_draws,
            )  # fmt: skip
        for name in self.cells:
            x = from_pixels(self.samples(name))
            rows[f"{name} ({len(x)})"] = judge(self.spaces.features(x), self.reference, self.judges)
        return rows

    def write(self, out_dir: str | Path, stem: str, keep: str | Path | None = None) -> str:
        """Score the cells, write ``<stem>-judges.md`` and ``.json`` in ``out_dir`` (and each
        cell's samples as ``<keep>/<cell>.npz``), and return the table."""
        rows = self.scores()
        table = markdown(rows)
        out = Path(out_dir)
        atomic_write_text(out / f"{stem}-judges.md", table)
        atomic_write_text(out / f"{stem}-judges.json", as_json(rows))
        if keep is not None:
            for name in self.cells:
                save_npz(Path(keep) / f"{name}.npz", from_pixels(self.samples(name)))
        return table
