"""Save and resume the whole training state, atomically (docs/architecture.md [conv-atomic-checkpoints]).

A checkpoint holds everything that carries over from one step to the next: the model and optimizer
(through the engine's resharding dist_checkpointing save), every rank's RNG states, and the trainer
state (step, weight version, the SAS per-prompt statistics, the data cursor, LR / engine counters and
the resolved config text). A run killed at any moment resumes from the last complete checkpoint.

Usage (every rank makes the same calls)::

    manager = CheckpointManager(cfg.checkpoint.dir, keep_last=cfg.checkpoint.keep_last)
    path = manager.resolve_resume(cfg.checkpoint.resume)        # at startup; None = fresh run
    if path is not None:
        state = manager.load(path, engine.load_checkpoint)      # engine + this rank's RNG restored
    ...
    manager.save(step, engine.save_checkpoint, trainer_state)   # every save_interval steps

See manager.py for the on-disk layout and why a killed save never leaves a loadable half checkpoint,
files.py for the manifest (sizes for big files, sha256 for small ones) and rng.py for the generators.
"""
from .errors import CheckpointError
from .manager import CheckpointManager, step_dir_name
from .rng import capture_rng_state, restore_rng_state

__all__ = ["CheckpointError", "CheckpointManager", "capture_rng_state", "restore_rng_state", "step_dir_name"]
