"""Noise-prediction networks."""

from ddim.models.unet import UNet, UNetConfig, timestep_embedding

__all__ = ["UNet", "UNetConfig", "timestep_embedding"]
