"""The trainer: THE loop (``loop.py``), its stages (rollout, update) and its setup/teardown.

``loop.py`` is the loop itself; everything it calls is built by ``setup.py`` once per run.
"""
from .loop import PREEMPTED_MARKER, train
from .rollout_stage import RolloutBatch, RolloutSettings, RolloutStage, RolloutStepError
from .setup import Trainer, build_trainer
from .update_stage import UpdateSettings, update_policy

__all__ = ["PREEMPTED_MARKER", "RolloutBatch", "RolloutSettings", "RolloutStage", "RolloutStepError", "Trainer",
           "UpdateSettings", "build_trainer", "train", "update_policy"]
