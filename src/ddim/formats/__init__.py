"""Files: checkpoints, legacy and diffusers weights, images, latents, data sets, atomic writes."""
