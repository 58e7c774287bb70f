"""The JSON requests of ``ddim serve``, parsed and checked before any work starts.

Every field is typed and bounded (:class:`Limits`); anything else is a :class:`BadRequest`
whose one-line message names the field. Images arrive as PNG data (a ``data:image/png``
URL or bare base64) and are decoded in memory: nothing from a request reaches the file
system.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ddim.formats.masks import named_mask
from ddim.names import INPAINT_METHODS, NAMED_MASKS, SOLVERS
from ddim.solvers import solver_facts


class BadRequest(ValueError):
    """A request the server refuses, with the HTTP status to answer (400 unless said)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_images: int = 64
    max_steps: int = 1000
    max_frames: int = 16
    max_guidance: float = 20.0
    max_body_bytes: int = 256 * 1024


@dataclass(frozen=True)
class ModelFacts:
    """What the served model takes: its classes (0 if unconditional), timesteps and images."""

    num_classes: int
    num_timesteps: int
    channels: int
    image_size: int


@dataclass(frozen=True)
class Guide:
    """A class (``None``: unconditional, ``-1``: one row per class) and its CFG weight."""

    label: int | None
    guidance: float | None


@dataclass(frozen=True)
class SampleRequest:
    n: int
    steps: int
    eta: float
    solver: str
    seed: int
    guide: Guide


@dataclass(frozen=True)
class InterpolateRequest:
    seeds: tuple[int, int]
    frames: int
    steps: int
    guide: Guide


@dataclass(frozen=True)
class EditRequest:
    image: torch.Tensor
    strength: float
    steps: int
    seed: int
    guide: Guide


@dataclass(frozen=True)
class InpaintRequest:
    image: torch.Tensor
    keep: torch.Tensor
    method: str
    steps: int
    seed: int
    guide: Guide


@dataclass(frozen=True)
class ReconstructRequest:
    image: torch.Tensor
    steps: int
    guide: Guide


MAX_SEED = 2**63 - 1


class Parser:
    """Reads one request's fields against the served model and the limits."""

    def __init__(self, body: dict[str, Any], facts: ModelFacts, limits: Limits) -> None:
        unknown = sorted(set(body) - self.known)
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(unknown)}")
        self.body, self.facts, self.limits = body, facts, limits

    known = frozenset({
        "n", "steps", "eta", "solver", "seed", "class", "guidance", "seed_a", "seed_b",
        "frames", "image", "strength", "mask", "method",
    })  # fmt: skip

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.body.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"{name} must be an integer, got {value!r}")
        if not low <= value <= high:
            raise BadRequest(f"{name} must lie in {low}..{high}, got {value}")
        return value

    def number(
        self, name: str, default: float, low: float, high: float, open_low: bool = False
    ) -> float:
        value = self.body.get(name, default)
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or not math.isfinite(value):
            raise BadRequest(f"{name} must be a number, got {value!r}")
        if value < low or value > high or (open_low and value == low):
            bracket = "(" if open_low else "["
            raise BadRequest(f"{name} must lie in {bracket}{low}, {high}], got {value}")
        return float(value)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.body.get(name, default)
        if value not in choices:
            raise BadRequest(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def steps(self, default: int = 20) -> int:
        most = min(self.limits.max_steps, self.facts.num_timesteps)
        return self.integer("steps", default, 1, most)

    def seed(self, name: str = "seed") -> int:
        return self.integer(name, 0, 0, MAX_SEED)

    def guide(self, allow_all: bool = False) -> Guide:
        """``class`` (an integer, ``null`` or, where ``allow_all``, ``"all"``) and ``guidance``."""
        label = self.body.get("class")
        k = self.facts.num_classes
        if label is not None and not k:
            raise BadRequest("this model is unconditional: leave class out")
        if label == "all" and allow_all:
            label = -1
        elif label is not None:
            label = self.integer("class", 0, 0, k - 1)
        guidance = self.body.get("guidance")
        if guidance is not None:
            if label is None:
                raise BadRequest("guidance needs a class")
            guidance = self.number("guidance", 0.0, 0.0, self.limits.max_guidance)
        return Guide(label, guidance)

    def image(self, name: str = "image") -> torch.Tensor:
        """A PNG of the model's size as a ``(1, C, H, W)`` batch in ``[-1, 1]``; transparent
        pixels count as black (a canvas drawing)."""
        img = self._png(name)
        c = self.facts.channels
        if img.mode in ("RGBA", "LA", "P", "PA"):
            rgba = img.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            img = Image.alpha_composite(black, rgba)
        pixels = np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.float32)
        x = torch.from_numpy(pixels.reshape(*pixels.shape[:2], c).copy()).permute(2, 0, 1)
        return (x / 127.5 - 1.0)[None]

    def mask(self) -> torch.Tensor:
        """``mask``: a named region to fill, or a black-and-white PNG (white keeps) of the
        model's size, as ``(1, 1, H, W)`` with 1 where the image is kept."""
        value = self.body.get("mask")
        size = self.facts.image_size
        if isinstance(value, str) and value in NAMED_MASKS:
            return named_mask(value, size)[None]
        named = ", ".join(NAMED_MASKS)
        if value is None:
            raise BadRequest(f"mask is missing: give a PNG or one of {named}")
        if isinstance(value, str) and len(value) < 32 and not value.startswith("data:"):
            raise BadRequest(f"unknown mask {value!r}: give a PNG or one of {named}")
        pixels = np.asarray(self._png("mask").convert("L"))
        if not np.isin(pixels, (0, 255)).all():
            raise BadRequest("mask is not binary: use white (keep) and black (fill) only")
        return torch.from_numpy(pixels == 255).float()[None, None]

    def _png(self, name: str) -> Image.Image:
        value = self.body.get(name)
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a PNG as a data URL or base64 text")
        payload = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{name} is not valid base64") from None
        size = self.facts.image_size
        try:
            img = Image.open(io.BytesIO(raw))
            if img.format != "PNG":
                raise BadRequest(f"{name} must be a PNG, got {img.format}")
            if img.size != (size, size):
                w, h = img.size
                raise BadRequest(f"{name} is {w}x{h}; the model takes {size}x{size}: resize it")
            img.load()
        except (OSError, SyntaxError, Image.DecompressionBombError):
            raise BadRequest(f"{name} cannot be read as a PNG") from None
        return img


def sample_request(body: dict[str, Any], facts: ModelFacts, limits: Limits) -> SampleRequest:
    p = Parser(body, facts, limits)
    solver = p.choice("solver", "ddim", SOLVERS)
    steps = p.steps()
    need = solver_facts(solver).min_steps
    if steps < need:
        raise BadRequest(f"solver {solver} needs at least {need} steps")
    return SampleRequest(
        n=p.integer("n", 16, 1, limits.max_images),
        steps=steps,
        eta=p.number("eta", 0.0, 0.0, 1.0),
        solver=solver,
        seed=p.seed(),
        guide=p.guide(allow_all=True),
    )


def interpolate_request(
    body: dict[str, Any], facts: ModelFacts, limits: Limits
) -> InterpolateRequest:
    p = Parser(body, facts, limits)
    return InterpolateRequest(
        seeds=(p.seed("seed_a"), p.seed("seed_b")),
        frames=p.integer("frames", 9, 2, limits.max_frames),
        steps=p.steps(),
        guide=p.guide(),
    )


def edit_request(body: dict[str, Any], facts: ModelFacts, limits: Limits) -> EditRequest:
    p = Parser(body, facts, limits)
    return EditRequest(
        image=p.image(),
        strength=p.number("strength", 0.5, 0.0, 1.0, open_low=True),
        steps=p.steps(),
        seed=p.seed(),
        guide=p.guide(),
    )


def inpaint_request(body: dict[str, Any], facts: ModelFacts, limits: Limits) -> InpaintRequest:
    p = Parser(body, facts, limits)
    return InpaintRequest(
        image=p.image(),
        keep=p.mask(),
        method=p.choice("method", "ddnm", INPAINT_METHODS),
        steps=p.steps(),
        seed=p.seed(),
        guide=p.guide(),
    )


def reconstruct_request(
    body: dict[str, Any], facts: ModelFacts, limits: Limits
) -> ReconstructRequest:
    p = Parser(body, facts, limits)
    return ReconstructRequest(image=p.image(), steps=p.steps(), guide=p.guide())
