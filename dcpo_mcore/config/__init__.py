"""The one configuration tree of dcpo-mcore (docs/architecture.md [conv-one-config]).

    cfg = load_config("configs/demo_cpu.yaml", ["algo.name=grpo", "optim.lr=2e-5"])
    check_paths(cfg)                      # at launch: data files, checkpoints exist
    dp = check_world_size(cfg, world)     # at launch: layout fits the ranks
    save_resolved_config(cfg, cfg.run_dir)

Every problem raises ConfigError, whose text is one `field.path: message` line per problem.
"""
from .algo import METHOD_SETTINGS, AlgoConfig, algo_config
from .errors import ConfigError
from .launch import LaunchConfig
from .loader import apply_overrides, config_to_dict, load_config, save_resolved_config, validate_config
from .model import ModelConfig, read_hf_architecture
from .schema import TrainConfig
from .sections import (CheckpointConfig, DataConfig, LoggingConfig, OptimConfig, ParallelConfig,
                       RewardConfig, RolloutConfig)
from .validation import check_paths, check_world_size

__all__ = [
    "METHOD_SETTINGS", "AlgoConfig", "CheckpointConfig", "ConfigError", "DataConfig", "LaunchConfig",
    "LoggingConfig", "ModelConfig", "OptimConfig", "ParallelConfig", "RewardConfig", "RolloutConfig",
    "TrainConfig", "algo_config", "apply_overrides", "check_paths", "check_world_size", "config_to_dict",
    "load_config", "read_hf_architecture", "save_resolved_config", "validate_config",
]
