#!/usr/bin/env python
"""Per-GPU memory plan of a config and its `launch:` section: `tools/plan.py CONFIG [key=value ...]`.

Thin wrapper; the logic is in dcpo_mcore/launch/plan.py. Exit 0 = fits, 2 = impossible layout (one-line error).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcpo_mcore.launch.plan import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
