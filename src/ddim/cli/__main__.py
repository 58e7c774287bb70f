"""``python -m ddim.cli ...`` (e.g. ``torchrun --nproc_per_node=4 -m ddim.cli train CONFIG``)."""

from ddim.cli import main

main()
