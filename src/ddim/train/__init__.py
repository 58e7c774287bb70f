"""Training an eps-model: config, the loop, its loss and batches, checkpoints, and runtime.

``python -m ddim.train CONFIG`` is ``ddim train CONFIG``.
"""
