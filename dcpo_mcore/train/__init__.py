"""The trainer's stages (rollout, update), its setup/teardown and the few collectives the loop needs.

``dcpo_mcore/trainer.py`` is the loop itself; everything it calls is built here once per run.
"""
from .rollout_stage import RolloutBatch, RolloutSettings, RolloutStage, RolloutStepError
from .setup import Trainer, build_trainer
from .update_stage import UpdateSettings, update_policy

__all__ = ["RolloutBatch", "RolloutSettings", "RolloutStage", "RolloutStepError", "Trainer", "UpdateSettings",
           "build_trainer", "update_policy"]
