"""The JSON requests of ``ddim serve``, parsed and checked before any work starts.

Each route accepts exactly its own fields (:data:`ROUTES`): the sampler options it takes,
whose ranges, choices and defaults are those declared once in
:mod:`ddim.sampler_options` (the CLI's too), and its own. Every field is typed and bounded
(:class:`Limits` adds the server's caps); anything else is a :class:`BadRequest` whose
one-line message names the field. :func:`route_defaults` is what the page starts from.
Images arrive as PNG data (a ``data:image/png`` URL or bare base64) and are decoded in
memory: nothing from a request reaches the file system.
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
from ddim.names import EXACT_SOLVERS, INPAINT_METHOD, INPAINT_METHODS, INPAINT_STEPS, NAMED_MASKS
from ddim.sampler_options import declared_fields, default_of
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
    body_seconds: float = 10.0  # a body that takes longer to arrive is cut off (408)


@dataclass(frozen=True)
class ModelFacts:
    """What the served model takes: its classes (0 if unconditional), timesteps and images,
    and a distilled student's own number of steps (``None`` for other models)."""

    num_classes: int
    num_timesteps: int
    channels: int
    image_size: int
    plan_steps: int | None = None


@dataclass(frozen=True)
class ClassRequest:
    """The class a request asks for (``None``: unconditional, ``-1``: one row per class) and
    its CFG weight."""

    label: int | None
    guidance: float | None


@dataclass(frozen=True)
class SampleRequest:
    """A checked ``POST /api/sample``: ``n`` images by ``solver`` in ``steps`` steps at
    ``eta``, from ``seed`` (as ``ddim sample --seed``), of the class ``guide`` asks for."""

    n: int
    steps: int
    eta: float
    solver: str
    seed: int
    guide: ClassRequest


@dataclass(frozen=True)
class InterpolateRequest:
    """A checked ``POST /api/interpolate``: ``frames`` images between the latents
    of the two ``seeds``, decoded in ``steps`` steps, of the class ``guide`` asks for."""

    seeds: tuple[int, int]
    frames: int
    steps: int
    guide: ClassRequest


@dataclass(frozen=True)
class EditRequest:
    """A checked ``POST /api/edit``: SDEdit of ``image`` ``(1, C, H, W)`` in ``[-1, 1]``
    at ``strength`` in ``(0, 1]``, in ``steps`` steps with noise from ``seed``, towards the
    class ``guide`` asks for."""

    image: torch.Tensor
    strength: float
    steps: int
    seed: int
    guide: ClassRequest


@dataclass(frozen=True)
class InpaintRequest:
    """A checked ``POST /api/inpaint``: ``image`` ``(1, C, H, W)`` in ``[-1, 1]`` with
    the pixels where ``keep`` ``(1, 1, H, W)`` is 0 filled in by ``method`` in ``steps`` steps,
    from ``seed``, with the class ``guide`` asks for."""

    image: torch.Tensor
    keep: torch.Tensor
    method: str
    steps: int
    seed: int
    guide: ClassRequest


@dataclass(frozen=True)
class ReconstructRequest:
    """A checked ``POST /api/reconstruct``: ``image`` ``(1, C, H, W)`` in ``[-1, 1]``
    encoded and decoded again by ``solver`` (DDIM or an exact solver) in ``steps`` steps,
    with the class ``guide`` asks for; DDIM's encoding with ``fixed_point`` extra calls a
    step (:func:`ddim.invert`)."""

    image: torch.Tensor
    steps: int
    solver: str
    guide: ClassRequest
    fixed_point: int = 0


MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class RouteFields:
    """The fields of one route: the sampler options it takes (names of
    :class:`~ddim.sampler_options.SamplerOptions` fields) and its own, with their defaults
    (those of the matching ``ddim`` command)."""

    run: tuple[str, ...]
    own: dict[str, Any]
    steps: int | None = None  # the command's default where it is not the library's
    solvers: tuple[str, ...] | None = None  # the solvers it takes, where not every one

    @property
    def names(self) -> frozenset[str]:
        """Every field the route accepts: its sampler options and its own."""
        return frozenset(self.run) | frozenset(self.own)


#: What each ``/api/<route>`` accepts, and its defaults.
ROUTES: dict[str, RouteFields] = {
    "sample": RouteFields(("steps", "eta", "solver", "guidance"),
                          {"n": 16, "seed": 0, "class": None}),
    "interpolate": RouteFields(("steps", "guidance"),
                               {"seed_a": 1, "seed_b": 2, "frames": 10, "class": None}),
    "edit": RouteFields(("steps", "guidance"),
                        {"image": None, "strength": 0.6, "seed": 0, "class": None}),
    "inpaint": RouteFields(("steps", "guidance"), {"image": None, "mask": None,
                           "method": INPAINT_METHOD, "seed": 0, "class": None},
                           steps=INPAINT_STEPS),
    "reconstruct": RouteFields(("steps", "guidance", "solver", "fixed_point"),
                               {"image": None, "class": None}, solvers=("ddim", *EXACT_SOLVERS)),
}  # fmt: skip


def route_defaults(route: str, facts: ModelFacts | None = None) -> dict[str, Any]:
    """The defaults of every field of ``route`` (``None``: none, or required); for a
    distilled student, its own number of steps (as ``ddim sample`` does)."""
    fields = ROUTES[route]
    run = {name: default_of(name) for name in fields.run}
    if fields.steps is not None:
        run["steps"] = fields.steps
    if facts is not None and facts.plan_steps is not None and "steps" in run:
        run["steps"] = facts.plan_steps
    return {**run, **fields.own}


class Parser:
    """Reads one request's fields, those of ``route`` only, against the served model and
    the limits."""

    def __init__(self, body: dict[str, Any], route: str, facts: ModelFacts, limits: Limits) -> None:
        takes = ROUTES[route].names
        unknown = sorted(set(body) - takes)
        if unknown:
            raise BadRequest(
                f"unknown field(s): {', '.join(unknown)} (/api/{route} takes "
                f"{', '.join(sorted(takes))})"
            )
        self.body, self.facts, self.limits = body, facts, limits
        self.defaults = route_defaults(route, facts)
        self.solvers = ROUTES[route].solvers

    def run(self, name: str) -> Any:
        """Sampler option ``name`` (``guidance`` is read with the class, :meth:`guide`): its
        declared choices or range, with the server's caps on steps and eta, and its route's
        default when absent."""
        facts, default = declared_fields()[name], self.defaults[name]
        if name == "solver" and self.solvers is not None:
            return self.choice(name, default, self.solvers)
        if facts.choices is not None:
            return self.choice(name, default, facts.choices)
        if name == "steps":
            return self.steps(default)
        if facts.integer:
            return self.integer(name, default, int(facts.low or 0), int(facts.high or MAX_SEED))
        high = 1.0 if name == "eta" else math.inf  # the page offers eta in [0, 1]
        return self.number(name, default, facts.low or 0.0, high, facts.low_open)

    def own(self, name: str) -> Any:
        """The route's default of its own field ``name``."""
        return self.defaults[name]

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        """Field ``name`` (``default`` when absent), an integer in ``low..high`` (JSON
        ``true``/``false`` are not); a :class:`BadRequest` naming it otherwise."""
        value = self.body.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"{name} must be an integer, got {value!r}")
        if not low <= value <= high:
            raise BadRequest(f"{name} must lie in {low}..{high}, got {value}")
        return value

    def number(
        self, name: str, default: float, low: float, high: float, open_low: bool = False
    ) -> float:
        """Field ``name`` (``default`` when absent) as a float, finite and in
        ``[low, high]`` (``(low, high]`` with ``open_low``); a :class:`BadRequest` naming it
        otherwise."""
        value = self.body.get(name, default)
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or not math.isfinite(value):
            raise BadRequest(f"{name} must be a number, got {value!r}")
        if value < low or value > high or (open_low and value == low):
            bracket = "(" if open_low else "["
            raise BadRequest(f"{name} must lie in {bracket}{low}, {high}], got {value}")
        return float(value)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """Field ``name`` (``default`` when absent), one of ``choices``; a
        :class:`BadRequest` naming it otherwise."""
        value = self.body.get(name, default)
        if value not in choices:
            raise BadRequest(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def steps(self, default: int) -> int:
        """``steps`` (``default`` when absent), from the declared minimum up to the
        smaller of ``limits.max_steps`` and the model's number of timesteps."""
        most = min(self.limits.max_steps, self.facts.num_timesteps)
        return self.integer("steps", default, int(declared_fields()["steps"].low or 1), most)

    def seed(self, name: str = "seed") -> int:
        """Seed field ``name`` (the route's default when absent), an integer in
        ``0..2**63 - 1`` (:data:`MAX_SEED`: seeds are int64)."""
        return self.integer(name, self.defaults[name], 0, MAX_SEED)

    def guide(self, allow_all: bool = False) -> ClassRequest:
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
            low = declared_fields()["guidance"].low or 0.0
            guidance = self.number("guidance", 0.0, low, self.limits.max_guidance)
        return ClassRequest(label, guidance)

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
        payload = value
        if value.startswith("data:"):
            head, comma, payload = value.partition(",")
            if not comma or not head.endswith(";base64"):
                raise BadRequest(f"{name} must be a data URL of base64 PNG data: data:image/png;"
                                 f"base64,...")  # fmt: skip
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{name} is not valid base64") from None
        size = self.facts.image_size
        try:
            img = Image.open(io.BytesIO(critical_chunks(raw, name)))
            if img.format != "PNG":
                raise BadRequest(f"{name} must be a PNG, got {img.format}")
            if img.size != (size, size):
                w, h = img.size
                raise BadRequest(f"{name} is {w}x{h}; the model takes {size}x{size}: resize it")
            img.load()
        except BadRequest:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            raise BadRequest(f"{name} cannot be read as a PNG") from None
        return img


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The chunks an image needs; every other (text, metadata, profiles) is dropped unread.
CRITICAL = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}


def critical_chunks(raw: bytes, name: str) -> bytes:
    """The PNG ``raw`` with only its :data:`CRITICAL` chunks (anything not a PNG is handed
    back for the decoder to refuse): a text chunk that would inflate to megabytes is never
    decompressed."""
    if not raw.startswith(PNG_SIGNATURE):
        return raw
    kept, at = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while at + 8 <= len(raw):
        length = int.from_bytes(raw[at : at + 4], "big")
        end = at + 12 + length
        if end > len(raw):
            raise BadRequest(f"{name} is a truncated PNG")
        if raw[at + 4 : at + 8] in CRITICAL:
            kept.append(raw[at:end])
        at = end
    return b"".join(kept)


def sample_request(body: dict[str, Any], facts: ModelFacts, limits: Limits) -> SampleRequest:
    """The :class:`SampleRequest` of ``body``; a :class:`BadRequest` for an unknown
    field, a bad value, or fewer steps than the solver needs."""
    p = Parser(body, "sample", facts, limits)
    solver = p.run("solver")
    steps = p.run("steps")
    need = solver_facts(solver).min_steps
    if steps < need:
        raise BadRequest(f"solver {solver} needs at least {need} steps")
    return SampleRequest(
        n=p.integer("n", p.own("n"), 1, limits.max_images),
        steps=steps,
        eta=p.run("eta"),
        solver=solver,
        seed=p.seed(),
        guide=p.guide(allow_all=True),
    )


def interpolate_request(
    body: dict[str, Any], facts: ModelFacts, limits: Limits
) -> InterpolateRequest:
    """The :class:`InterpolateRequest` of ``body``; a :class:`BadRequest` for an
    unknown field or a bad value."""
    p = Parser(body, "interpolate", facts, limits)
    return InterpolateRequest(
        seeds=(p.seed("seed_a"), p.seed("seed_b")),
        frames=p.integer("frames", p.own("frames"), 2, limits.max_frames),
        steps=p.run("steps"),
        guide=p.guide(),
    )


def edit_request(body: dict[str, Any], facts: ModelFacts, limits: Limits) -> EditRequest:
    """The :class:`EditRequest` of ``body``; a :class:`BadRequest` for an unknown field,
    a bad value or an image that is not a PNG of the model's size."""
    p = Parser(body, "edit", facts, limits)
    return EditRequest(
        image=p.image(),
        strength=p.number("strength", p.own("strength"), 0.0, 1.0, open_low=True),
        steps=p.run("steps"),
        seed=p.seed(),
        guide=p.guide(),
    )


def inpaint_request(body: dict[str, Any], facts: ModelFacts, limits: Limits) -> InpaintRequest:
    """The :class:`InpaintRequest` of ``body``; a :class:`BadRequest` for an unknown
    field, a bad value, or an image or mask that is not a PNG of the model's size."""
    p = Parser(body, "inpaint", facts, limits)
    return InpaintRequest(
        image=p.image(),
        keep=p.mask(),
        method=p.choice("method", p.own("method"), INPAINT_METHODS),
        steps=p.run("steps"),
        seed=p.seed(),
        guide=p.guide(),
    )


def reconstruct_request(
    body: dict[str, Any], facts: ModelFacts, limits: Limits
) -> ReconstructRequest:
    """The :class:`ReconstructRequest` of ``body``; a :class:`BadRequest` for an
    unknown field, a bad value or an image that is not a PNG of the model's size."""
    p = Parser(body, "reconstruct", facts, limits)
    solver, fixed_point = p.run("solver"), p.run("fixed_point")
    if fixed_point and solver != "ddim":
        raise BadRequest(f"fixed_point applies to DDIM's encoding (solver ddim), not {solver}")
    return ReconstructRequest(image=p.image(), steps=p.run("steps"), solver=solver,
                              guide=p.guide(), fixed_point=fixed_point)  # fmt: skip
