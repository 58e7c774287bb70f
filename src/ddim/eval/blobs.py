"""Blobs: samples whose brightness no real image has.

An under-trained ε-model sampled deterministically (DDIM, η = 0) often returns a smooth
blob on a grey background instead of a digit. Such a sample is easy to see and easy to
count: its *mean brightness*, or its *background level* (the mean of a frame ``border``
pixels wide along the edge), lies outside the range these take over real images.

The range is fixed from reference images (the training digits) as the
``[lower, upper]`` percentiles of each statistic, so the rule flags about
``(100 - upper + lower)`` percent of the reference images themselves and a similar share
of held-out real images; anything far above that is a property of the model.

Images are in the model convention, ``[-1, 1]``; they are clipped and mapped to
``[0, 1]`` (as when saved) before the statistics are taken.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

DEFAULT_PERCENTILES = (0.1, 99.9)
DEFAULT_BORDER = 3


def brightness(x: torch.Tensor, border: int = DEFAULT_BORDER) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean brightness, border mean)`` of each ``(N, C, H, W)`` image in ``[-1, 1]``.

    Both are in ``[0, 1]`` and averaged over channels; the border is the frame of the
    outer ``border`` rows and columns.
    """
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W); got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if not 0 < 2 * border < min(h, w):
        raise ValueError(f"a border of {border} px leaves no inside in {h}x{w} images")
    unit = (x.double().clamp(-1, 1) + 1) / 2
    total = unit.sum(dim=(1, 2, 3))
    inside = unit[..., border:-border, border:-border].sum(dim=(1, 2, 3))
    channels = x.shape[1]
    frame_pixels = channels * (h * w - (h - 2 * border) * (w - 2 * border))
    return total / (channels * h * w), (total - inside) / frame_pixels


@dataclass(frozen=True)
class BlobRule:
    """The accepted ranges of mean brightness and border mean, both in ``[0, 1]``."""

    mean: tuple[float, float]
    border_mean: tuple[float, float]
    border: int = DEFAULT_BORDER
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES

    @classmethod
    def from_reference(
        cls,
        images: torch.Tensor,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
        border: int = DEFAULT_BORDER,
    ) -> BlobRule:
        """The ``percentiles`` (e.g. 0.1 and 99.9) of both statistics over ``images``."""
        lower, upper = percentiles
        if not 0 <= lower < upper <= 100:
            raise ValueError(
                f"percentiles must satisfy 0 <= lower < upper <= 100; got {percentiles}"
            )
        mean, frame = brightness(images, border)
        q = torch.tensor([lower / 100, upper / 100], dtype=torch.float64)
        m_lo, m_hi = torch.quantile(mean, q).tolist()
        f_lo, f_hi = torch.quantile(frame, q).tolist()
        return cls((m_lo, m_hi), (f_lo, f_hi), border, (lower, upper))

    def is_blob(self, x: torch.Tensor) -> torch.Tensor:
        """A boolean ``(N,)``: which images lie outside either range."""
        mean, frame = brightness(x, self.border)
        outside_mean = (mean < self.mean[0]) | (mean > self.mean[1])
        outside_frame = (frame < self.border_mean[0]) | (frame > self.border_mean[1])
        return outside_mean | outside_frame

    def rate(self, x: torch.Tensor) -> float:
        """The share of ``x`` that is a blob."""
        return float(self.is_blob(x).double().mean())

    def describe(self) -> str:
        """The rule in one sentence."""
        lower, upper = self.percentiles
        return (
            f"blob: mean brightness outside [{self.mean[0]:.4f}, {self.mean[1]:.4f}] or "
            f"{self.border}-px border mean outside "
            f"[{self.border_mean[0]:.4f}, {self.border_mean[1]:.4f}] "
            f"(the {lower:g}-{upper:g} percentiles of the reference images; pixels in [0, 1])"
        )

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready record of the rule."""
        return asdict(self)
