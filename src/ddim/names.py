"""The names users choose among (spacings, solvers, variances, formats, features, data
and loss options), defined once.

This module imports nothing, so the command line can offer these choices in ``--help``
without importing torch; the library modules that implement them import them from here.
"""

SPACINGS = ("uniform", "quad", "linspace", "trailing", "logsnr", "karras")
#: The paper's sigma-hat row of Table 1 (the official code's ``ddpm_noisy`` step).
SIGMA_HAT = "ddpm-large"
VARIANCES = ("ddim", SIGMA_HAT)
#: The solvers of ``ddim.sample(solver=...)``; each declares its facts (fewest steps, noise,
#: model calls) beside its function in ``ddim.solvers`` (its measured order is in the
#: README's solver table).
SOLVERS = ("ddim", "dpmpp-2m", "dpmpp-3m", "unipc", "plms", "heun", "dpmpp-2m-sde", "edict",
           "bdia")  # fmt: skip
#: The solvers whose every step inverts in closed form: their encoding is exact. Their
#: published coupling parameters: EDICT's mixing weight p and BDIA's gamma, and the step
#: count EDICT's p was chosen for (Wallace et al. sample in 50 steps).
EXACT_SOLVERS = ("edict", "bdia")
EDICT_P, BDIA_GAMMA = 0.93, 1.0
EDICT_PAPER_STEPS = 50
#: The most EDICT's inverse may expand ``x - y`` over a whole plan, ``p ** (-2 S)``
#: (measured on ``mnist``: docs/results/table2-reconstruction.md).
EDICT_MAX_EXPANSION = 1e7
#: How a solver run ends: a step to alpha_bar = 1 (first order or trapezoidal), or at the
#: smallest timestep.
FINAL_STEPS = ("denoise", "trapezoid", "none")
#: The final step of the solvers other than ddim (measured: docs/results/solvers-oracle.md,
#: docs/results/solvers-mnist.md).
DEFAULT_FINAL_STEP = "trapezoid"
CONVERT_SOURCES = ("official", "pesser", "ours", "diffusers")
CONVERT_TARGETS = ("ours", "diffusers")
#: How a ddim checkpoint may store its weights (``ddim convert --dtype``); they are always
#: computed in float32.
WEIGHT_DTYPES = ("fp32", "fp16", "bf16")
FEATURES = ("mnist", "mlp", "inception", "pixels")
#: The judges of sample quality (``ddim.eval.judges``), in the order tables show them.
JUDGES = (
    "fd-mnist", "fd-mlp", "fd-pca", "kid-mnist", "precision", "recall", "recognizable",
)  # fmt: skip
#: The t's of the held-out loss (``ddim eval loss``), spread over a T = 1000 schedule.
HELDOUT_TIMESTEPS = (50, 150, 300, 500, 700, 900)
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
#: Noise schedules by name (``diffusion.schedule``); spacings laid out by noise level.
SCHEDULES = ("linear", "cosine")
#: What a network predicts (``UNetConfig.prediction``, ``ddim.parameterization``): the noise,
#: Salimans & Ho's ``v = alpha eps - sigma x0``, or the data.
PREDICTIONS = ("eps", "v", "x")
#: Progressive distillation's weights on the data error (``progressive.loss_weight``).
DISTILL_WEIGHTINGS = ("snr", "truncated-snr", "landing")
#: The solvers a first teacher may walk its plan with (``distill.teacher_solver``): the
#: deterministic ones whose state is the image alone.
DISTILL_TEACHER_SOLVERS = ("ddim", "dpmpp-2m", "dpmpp-3m", "unipc", "plms", "heun")
#: How the first teacher's plan is laid out (``distill.teacher_spacing``): the spacings that
#: start at the top timestep, so every student starts from pure noise.
DISTILL_SPACINGS = ("trailing", "linspace")
NOISE_LEVEL_SPACINGS = ("logsnr", "karras")
#: The weights a checkpoint may hold: the EMA (to sample with) and the raw training weights.
WEIGHTS = ("ema", "model")
#: Training data kinds (``data.kind``), the kinds that take ``data.labels``, and the loss
#: weightings across t (``training.loss_weighting``).
DATA_KINDS = ("folder", "packed", "mnist", "cifar10", "npz", "digits")
LABELLED_KINDS = ("folder", "mnist", "npz")
LOSS_WEIGHTINGS = ("simple", "min-snr")
#: How a folder's images become squares (``data.preprocess``, ``ddim.formats.preprocess``).
PREPROCESSINGS = ("center-crop", "resize-crop", "celeba")
#: How the known pixels steer inpainting (``ddim.inpaint``), and the named masks, each after
#: the region it fills (``ddim.formats.masks``).
INPAINT_METHODS = ("replace", "repaint", "dps", "ddnm")
#: Inpainting's method and steps by default (the library's, the CLI's and the page's).
INPAINT_METHOD, INPAINT_STEPS = "ddnm", 20
#: Inpainting's resampling by default, the setting that kept the label of inpainted held-out
#: digits most often (docs/results/inpainting-digits.md): 15 times over jumps of 2 steps,
#: in the low-noise half of the walk only (t < T / 2); 160 model calls at 20 steps.
INPAINT_RESAMPLE, INPAINT_JUMP_LENGTH, INPAINT_RESAMPLE_BELOW = 15, 2, 0.5
NAMED_MASKS = ("top-half", "bottom-half", "left-half", "right-half", "center")
