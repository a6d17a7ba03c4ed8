"""The root of the one config tree, `TrainConfig`. Sections live in model.py, sections.py and
algo.py; checks that span fields live in validation.py and run here, once, after every section
has validated on its own.
"""
from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from .algo import DEFAULT_TIS_CAP, AlgoConfig, DcpoSettings, with_default_name
from .base import Section
from .errors import ConfigProblems
from .launch import LaunchConfig
from .model import ModelConfig
from .sections import (CheckpointConfig, DataConfig, LoggingConfig, OptimConfig, ParallelConfig,
                       RewardConfig, RolloutConfig, SyncConfig)
from .validation import cross_field_problems


class TrainConfig(Section):
    """Everything a training run needs. Build it with `load_config` / `validate_config`, which turn
    pydantic's errors into one `ConfigError`; constructing it directly raises `ValidationError`."""

    run_dir: str = Field("runs/dcpo", description="Directory for all outputs of the run: resolved "
                         "config, checkpoints (by default), metrics, logs.")
    seed: int = Field(42, description="Seed for data order, sampling and model init.")
    steps: int = Field(400, ge=1, description="Training steps (rollout batches) to run (paper: 400).")
    eval_interval: int = Field(5, ge=0, description="Evaluate every this many training steps and "
                               "before the first (paper: 5); 0 = never.")
    eval_k: int = Field(0, ge=0, description="At every evaluation also sample k responses per problem "
                        "(T = 1, top_p = 1) and report Avg@k next to the greedy Avg@1 (docs/algorithm.md "
                        "[avg-at-k]); 0 = greedy Avg@1 only.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model: checkpoint, "
                               "architecture, precision.")
    parallel: ParallelConfig = Field(default_factory=ParallelConfig, description="Megatron "
                                     "parallelism and micro-batching of the trainer.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="SGLang servers and "
                                   "sampling.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Verifier and reward scheme.")
    algo: AlgoConfig = Field(default_factory=DcpoSettings, description="Policy-gradient method "
                             "(algo.name) and that method's own settings.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="AdamW and learning-rate schedule.")
    data: DataConfig = Field(default_factory=DataConfig, description="Prompt datasets and how they are read.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Saving and resuming.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Metric sinks.")
    sync: SyncConfig = Field(default_factory=SyncConfig, description="Weight broadcast from the trainer "
                             "into the SGLang servers after every update.")
    launch: LaunchConfig | None = Field(None, description="Slurm layout for the sbatch launchers and "
                                        "tools/plan.py; null = one colocated node with the job's GPUs.")

    @field_validator("algo", mode="before")
    @classmethod
    def _algo_name_defaults_to_dcpo(cls, value):
        return with_default_name(value)

    @model_validator(mode="after")
    def _resolve_and_check(self) -> "TrainConfig":
        if self.checkpoint.dir is None:
            self.checkpoint.dir = f"{self.run_dir.rstrip('/')}/checkpoints"
        if self.rollout.max_staleness >= 1 and "tis_cap" not in self.algo.model_fields_set:
            self.algo.tis_cap = DEFAULT_TIS_CAP  # off-policy samples get the correction unless it is set (null = off)
        problems = cross_field_problems(self)
        if problems:
            raise ConfigProblems(problems)
        return self

