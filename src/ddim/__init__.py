"""ddim: train a DDPM and sample it 10-50x faster with DDIM (Song, Meng & Ermon, ICLR 2021).

The public names are imported on first use (PEP 562), so ``import ddim.cli`` can show its
help without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ddim.formats.checkpoint import load_pretrained
    from ddim.interpolate import slerp, slerp_grid
    from ddim.models import oracle
    from ddim.noise import seeded_generators
    from ddim.sampling import SamplerOptions, Step, Trajectory, invert, model_calls, sample
    from ddim.schedule import NoiseSchedule

_SOURCES = {
    "NoiseSchedule": "ddim.schedule",
    "SamplerOptions": "ddim.sampling",
    "Step": "ddim.sampling",
    "Trajectory": "ddim.sampling",
    "invert": "ddim.sampling",
    "load_pretrained": "ddim.formats.checkpoint",
    "model_calls": "ddim.sampling",
    "oracle": "ddim.models",  # the module ddim.models.oracle
    "sample": "ddim.sampling",
    "seeded_generators": "ddim.noise",
    "slerp": "ddim.interpolate",
    "slerp_grid": "ddim.interpolate",
}

__all__ = [
    "NoiseSchedule",
    "SamplerOptions",
    "Step",
    "Trajectory",
    "invert",
    "load_pretrained",
    "model_calls",
    "oracle",
    "sample",
    "seeded_generators",
    "slerp",
    "slerp_grid",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use, then keep it here."""
    if name not in _SOURCES:
        raise AttributeError(f"module 'ddim' has no attribute {name!r}")
    module = importlib.import_module(_SOURCES[name])
    value = getattr(module, name, None) or importlib.import_module(f"{module.__name__}.{name}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_SOURCES})
