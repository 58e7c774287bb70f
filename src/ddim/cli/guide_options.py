"""The options of class-conditional sampling (``--class``, ``--guidance``,
``--classifier-scale``, ``--classifier``) and what they resolve to: the model, the labels
and the classifier. Nothing here imports torch until a command runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from ddim.cli import run_options
from ddim.cli.options import option, options_as

if TYPE_CHECKING:
    import torch

    from ddim.schedule import NoiseSchedule

#: The bundled model of ``--class`` when ``--ckpt`` is not given (and no classifier guides).
CONDITIONAL_MODEL = "mnist-cond"

class_option = option(
    "--class",
    "class_",
    default=None,
    metavar="K|all",
    help="class K of a class-conditional model (the bundled mnist-cond unless --ckpt is "
    "given) or, with --classifier-scale, of the classifier; all: one grid row per class",
)
#: ``--class`` of the commands that start from images (encode, reconstruct, edit, inpaint):
#: their images' class, with no classifier and no grid.
image_class_option = option(
    "--class",
    "class_",
    default=None,
    metavar="K",
    help="class K of a class-conditional model (the bundled mnist-cond unless --ckpt is "
    "given), for every image",
)
guidance_option = run_options.guidance_option
classifier_scale_option = run_options.classifier_scale_option
classifier_option = option(
    "--classifier",
    default=None,
    metavar="PATH",
    show_default="the bundled MNIST noisy classifier",
    help="the noise-aware classifier of --classifier-scale",
)


@dataclass(frozen=True)
class ClassChoice:
    """The values of :data:`class_guidance`: ``--class`` and ``--guidance``."""

    class_: str | None
    guidance: float | None


#: ``--class --guidance``, handed to a command as ``guide: ClassChoice``.
class_guidance = options_as(ClassChoice, [image_class_option, guidance_option], name="guide")


def model_for(ckpt: str, class_: str | None, classifier_scale: float | None = None) -> str:
    """``--ckpt``, or the bundled conditional model when ``--class`` is given, ``--ckpt``
    was left at its default and no classifier guides the unconditional one."""
    ctx = click.get_current_context(silent=True)
    default = ctx is not None and ctx.get_parameter_source("ckpt") == ParameterSource.DEFAULT
    if class_ is not None and classifier_scale is None and default:
        return CONDITIONAL_MODEL
    return ckpt


def class_labels(
    model: object, class_: str | None, n: int, classifier: object = None
) -> tuple[torch.Tensor | None, int, int | None]:
    """The labels of ``--class`` for ``n`` images: ``(labels, n, nrow)``. ``all`` gives
    ``n // K`` images of each of the ``K`` classes (at least one), one row per class; a
    class out of range, or a class for a model with no classes and no classifier, is a
    usage error."""
    import torch

    from ddim.guidance import balanced_labels, num_classes

    if class_ is None:
        return None, n, None
    k = num_classes(model) or num_classes(classifier)
    if not k:
        raise click.BadParameter(
            "this model is unconditional; --class needs a class-conditional model "
            "or --classifier-scale",
            param_hint="'--class'",
        )
    if class_ == "all":
        labels = balanced_labels(k, n)
        return labels, len(labels), len(labels) // k
    if not class_.isdigit() or int(class_) >= k:
        raise click.BadParameter(
            f"{class_!r} is not a class of this model: give 0..{k - 1} or all",
            param_hint="'--class'",
        )
    return torch.full((n,), int(class_)), n, None


def load_guidance_classifier(
    path: str | None, scale: float | None, schedule: NoiseSchedule, device: torch.device
) -> Any:
    """The noise-aware classifier of ``--classifier-scale`` (``None`` without one)."""
    if scale is None:
        if path is not None:
            raise click.UsageError("--classifier needs --classifier-scale")
        return None
    from ddim.models.noisy_classifier import load_noisy_classifier

    return load_noisy_classifier(path, device, schedule)
