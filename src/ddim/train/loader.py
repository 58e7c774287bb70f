"""This process's images of each training step, read ahead by DataLoader workers.

Item ``s`` of :class:`StepShares` is the share of step ``s``'s global batch
(:func:`ddim.train.batches.step_indices`) that this rank trains on, as uint8 images and
their labels; :func:`step_loader` hands the steps from ``first`` on to a
:class:`torch.utils.data.DataLoader`, so ``workers`` processes decode the steps ahead while
the model trains. Which images a step holds is fixed by the step alone, so the number of
workers or ranks never changes a run, and a resumed run reads exactly what the first
would have. Under torchrun each rank reads only its own share.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ddim.formats.image_sets import ImageSet
from ddim.train.batches import DataOrder, step_indices

Share = tuple[int, Tensor, Tensor | None]


class StepShares(Dataset):
    """Step ``s`` -> ``(s, images, labels)``: rows ``part`` of its global batch."""

    def __init__(
        self, images: ImageSet, order: DataOrder, batch_size: int, part: slice, labelled: bool
    ) -> None:
        self.images, self.order, self.batch_size = images, order, batch_size
        self.part, self.labelled = part, labelled

    def __len__(self) -> int:
        raise TypeError("a stream of steps has no length")

    def __getitem__(self, step: int) -> Share:
        index = step_indices(self.order, step, self.batch_size)[self.part]
        labels = self.images.labels[index] if self.labelled else None
        return step, self.images.batch(index), labels


def _as_is(item: Share) -> Share:
    return item


def step_loader(
    shares: StepShares, first: int, last: int, workers: int, pin_memory: bool
) -> Iterator[Share]:
    """Steps ``first .. last`` of ``shares`` in order, ``workers`` processes reading ahead
    (0: read in this process when asked)."""
    steps = range(first, last + 1)
    if workers == 0:
        return (shares[s] for s in steps)
    return _one_line(
        DataLoader(
            shares,
            batch_size=None,
            sampler=steps,
            num_workers=workers,
            collate_fn=_as_is,
            pin_memory=pin_memory,
            prefetch_factor=2,
            persistent_workers=False,
        )
    )


def _one_line(loader: DataLoader) -> Iterator[Share]:
    """The loader's items; a worker's ValueError (an image that can no longer be read)
    raised again as its own one-line message, without the worker's traceback."""
    try:
        yield from loader
    except ValueError as e:
        last = str(e).rstrip().splitlines()[-1]
        raise ValueError(last.removeprefix("ValueError: ")) from None


def own_part(batch_size: int, rank: int, world: int) -> slice:
    """The contiguous rows of a global batch that ``rank`` of ``world`` trains on."""
    share = batch_size // world
    return slice(rank * share, (rank + 1) * share)
