"""``ddim serve``: a local web page to sample, guide, interpolate and edit with one model,
through the library calls the CLI makes (:mod:`ddim.serve.app`)."""
