"""How fast a model runs here: the measured choice of layout, rows a pass and compilation.

- :mod:`~ddim.speed.prepared`: a model prepared in a :class:`Setting` (channels-last,
  ``torch.compile``, a bound on the rows of one forward pass);
- :mod:`~ddim.speed.choice`: the setting that finishes a job soonest, from measurements;
- :mod:`~ddim.speed.record`: those measurements, kept per machine;
- :mod:`~ddim.speed.auto`: a model prepared for one sampling job (:func:`fastest`, or
  :func:`as_given` for a setting its caller chose), learning from the finished job.

A workflow (:mod:`ddim.workflows`) runs the model it is given; prepare it here first::

    auto = speed.fastest(model, sched, n, shape, batch_size=b, options=options)
    start = time.perf_counter()
    x = workflows.generate(auto.model, sched, n, shape, batch_size=b, options=options)
    auto.learn(time.perf_counter() - start)
"""

from ddim.speed.auto import Fastest, as_given, fastest
from ddim.speed.prepared import Setting, for_inference, prepare

__all__ = ["Fastest", "Setting", "as_given", "fastest", "for_inference", "prepare"]
