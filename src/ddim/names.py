"""The names users choose among (spacings, variances, formats, features), defined once.

This module imports nothing, so the command line can offer these choices in ``--help``
without importing torch; the library modules that implement them import them from here.
"""

SPACINGS = ("uniform", "quad", "linspace", "trailing")
#: The paper's sigma-hat row of Table 1 (the official code's ``ddpm_noisy`` step).
SIGMA_HAT = "ddpm-large"
VARIANCES = ("ddim", SIGMA_HAT)
CONVERT_SOURCES = ("official", "pesser", "ours", "diffusers")
CONVERT_TARGETS = ("ours", "diffusers")
FEATURES = ("mnist", "inception", "pixels")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
