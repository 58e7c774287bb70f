"""Batched and sharded end-to-end uses of a model: the functions behind the ``ddim``
command, for Python users.

- :mod:`~ddim.workflows.generation`: :func:`generate` from seeds, :func:`decode` given
  latents, and :func:`interpolation_latents`;
- :mod:`~ddim.workflows.encoding`: :func:`encode` and :func:`reconstruct`;
- :mod:`~ddim.workflows.sample_folder`: many samples as a folder of PNGs, shared by torchrun
  processes and resumed after a kill (:func:`sample_to_folder`);
- :mod:`~ddim.workflows.batches`: the batches they split their work into.

They split work into batches without changing results: image ``i`` of :func:`generate`
comes from seed ``seed + i`` whatever ``batch_size`` is, and encoding and decoding are
deterministic. Each runs the model it is given (:mod:`ddim.speed` prepares one the fastest
measured way). ``options`` is a :class:`SamplerOptions` (:data:`DEFAULTS` unless given).
"""

from ddim.sampling import SamplerOptions
from ddim.workflows.encoding import Reconstruction, encode, per_dim_mse, reconstruct
from ddim.workflows.generation import DEFAULTS, decode, generate, interpolation_latents
from ddim.workflows.sample_folder import pack_npz, sample_to_folder

__all__ = [
    "DEFAULTS",
    "Reconstruction",
    "SamplerOptions",
    "decode",
    "encode",
    "generate",
    "interpolation_latents",
    "pack_npz",
    "per_dim_mse",
    "reconstruct",
    "sample_to_folder",
]
