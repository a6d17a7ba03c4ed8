"""Checkpoint conversion without installing the console script: ``python tools/convert.py hf-to-mcore ...``.

Same as ``dcpo-convert`` (see ``dcpo_mcore/cli/convert.py``). The ``__main__`` guard matters:
dist_checkpointing's save starts a process that re-imports ``__main__``.
"""
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from dcpo_mcore.cli.convert import main

    sys.exit(main())
