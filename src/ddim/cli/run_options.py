"""The command line's sampling options, made from :class:`ddim.sampler_options.SamplerOptions`.

Each field of a sampling run is declared once, with its help, range and choices, in
:mod:`ddim.sampler_options`; :func:`run_option` turns a field into its click option
(``steps`` -> ``--steps``, ``clip_denoised`` -> ``--clip/--no-clip``). A command may change
the default (inpainting's 20 steps, the CLI's ``--precision auto``), never the declaration.
Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from ddim.sampler_options import Declared, declared_fields, default_of

#: Fields whose flag is not the field's name: ``clip_denoised`` is ``--clip/--no-clip``.
FLAGS = {"clip_denoised": ("--clip/--no-clip", "clip")}
_UNSET: Any = object()


def click_type(facts: Declared) -> click.ParamType | None:
    """The click type of a declaration: a choice, a bounded whole number or a bounded
    number (``None`` for a flag)."""
    if facts.choices is not None:
        return click.Choice(facts.choices)
    if facts.low is None and facts.high is None:
        return None
    if facts.integer:
        return click.IntRange(min=facts.low, max=facts.high)
    return click.FloatRange(min=facts.low, max=facts.high, min_open=facts.low_open)


def run_option(
    name: str,
    *,
    default: Any = _UNSET,
    shown: str | None = None,
    choices: tuple[str, ...] | None = None,
    help: str | None = None,
) -> Any:
    """The click option of :class:`SamplerOptions` field ``name``, with the library's
    default unless ``default`` is given (``shown`` then says what it means in ``--help``),
    and, for a command that takes only some of them, the declared ``choices`` it takes and
    the ``help`` that describes those."""
    facts = declared_fields()[name]
    if choices is not None:
        if not set(choices) <= set(facts.choices or ()):
            raise ValueError(f"{name} offers no {sorted(set(choices) - set(facts.choices or ()))}")
        facts = dataclasses.replace(facts, choices=choices)
    flag, param = FLAGS.get(name, (f"--{name.replace('_', '-')}", name))
    value = default_of(name) if default is _UNSET else default
    if shown is None:
        shown = facts.when_none if value is None else True
    kwargs: dict[str, Any] = {"default": value, "show_default": shown,
                              "help": help or facts.help}  # fmt: skip
    kind = click_type(facts)
    if kind is not None:
        kwargs["type"] = kind
    return click.option(flag, param, **kwargs)


#: The options the commands share, each made once here.
steps_option = run_option("steps")
spacing_option = run_option("spacing")
eta_option = run_option("eta")
variance_option = run_option("variance")
clip_option = run_option("clip_denoised")
solver_option = run_option("solver")
final_step_option = run_option("final_step")
precision_option = run_option("precision", default="auto", shown="auto (see `ddim info --device`)")
guidance_option = run_option("guidance")
classifier_scale_option = run_option("classifier_scale")
edict_p_option = run_option("edict_p")
bdia_gamma_option = run_option("bdia_gamma")
fixed_point_option = run_option("fixed_point")
#: The solvers whose encoding a command can undo: DDIM's (to within Table 2's error) and
#: the exact ones.
encoding_solver_option = run_option(
    "solver",
    choices=("ddim", "edict", "bdia"),
    help="how images are encoded and decoded: ddim (the paper's encoding, close to "
    "invertible as S grows), or edict / bdia, which invert exactly (their latent is two "
    "tensors, the sampler's whole state)",
)
