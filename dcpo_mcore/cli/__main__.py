"""``python -m dcpo_mcore.cli`` is ``dcpo-train`` (torchrun, slurm/ and the launcher run it this way)."""
import sys

from .train import train_main

sys.exit(train_main())
