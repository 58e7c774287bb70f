"""ddim: train a DDPM and sample it 10-50x faster with DDIM (Song, Meng & Ermon, ICLR 2021)."""

from ddim.formats.checkpoint import load_pretrained
from ddim.interpolate import slerp, slerp_grid
from ddim.models import oracle
from ddim.noise import seeded_generators
from ddim.sampling import Trajectory, invert, sample
from ddim.schedule import NoiseSchedule

__all__ = [
    "NoiseSchedule",
    "Trajectory",
    "invert",
    "load_pretrained",
    "oracle",
    "sample",
    "seeded_generators",
    "slerp",
    "slerp_grid",
]
__version__ = "0.1.0"
