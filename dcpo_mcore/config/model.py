"""`model` section: where the weights come from, the architecture, precision.

The architecture is written out only for models built from scratch (the CPU demo's). When `hf_path`
is given, its `config.json` defines the architecture: unset fields are read from it, and a field
written in the YAML that disagrees with it is refused in one line (the engine builds from the file,
so a disagreeing YAML value would be silently ignored).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from dcpo_mcore.engine.hf_arch import HF_SIZE_KEYS, ArchError, ArchSpec

from .base import Section
from .errors import ConfigProblems


# The architecture fields, named as in ArchSpec; engine/hf_arch.py maps them to config.json keys.
ARCH_FIELDS = tuple(HF_SIZE_KEYS)
# Without these the model cannot be built; the other two have megatron-style fallbacks.
_FROM_FILE = " Read from hf_path's config.json when hf_path is set."
REQUIRED_ARCH = ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "max_position_embeddings")


def read_hf_architecture(hf_path: str) -> dict[str, int]:
    """Architecture fields from `hf_path/config.json`, read and checked by the engine's own reader
    (ArchSpec), so the config and the model builder can never read it differently; raises
    ConfigProblems naming model.hf_path."""
    if not (Path(hf_path) / "config.json").is_file():
        raise ConfigProblems([
            f"model.hf_path={hf_path!r}: no config.json in it; point model.hf_path at a Hugging Face "
            "checkpoint directory or unset it and give the architecture fields"])
    try:
        spec = ArchSpec.from_hf_config(hf_path)
    except ArchError as exc:
        raise ConfigProblems([f"model.hf_path={hf_path!r}: {exc}"]) from None
    return {name: getattr(spec, name) for name in ARCH_FIELDS}


class ModelConfig(Section):
    hf_path: str | None = Field(
        None, description="Hugging Face checkpoint directory (config.json, tokenizer, weights). Its "
        "config.json defines the architecture: the fields below are read from it and may only repeat it.")
    init_checkpoint: str | None = Field(
        None, description="megatron torch_dist checkpoint directory to initialise the policy from "
        "(the pretrain -> RL path); overrides the weights in hf_path.")
    num_layers: int | None = Field(
        None, ge=1, description="Transformer layers (HF num_hidden_layers)." + _FROM_FILE)
    hidden_size: int | None = Field(None, ge=1, description="Model width (HF hidden_size)." + _FROM_FILE)
    ffn_hidden_size: int | None = Field(
        None, ge=1, description="MLP inner width (HF intermediate_size; default 4 * hidden_size)." + _FROM_FILE)
    num_attention_heads: int | None = Field(
        None, ge=1, description="Query heads (HF num_attention_heads)." + _FROM_FILE)
    num_query_groups: int | None = Field(
        None, ge=1, description="Key/value heads for GQA (HF num_key_value_heads; default "
        "num_attention_heads)." + _FROM_FILE)
    vocab_size: int | None = Field(
        None, ge=1, description="Tokenizer vocabulary size before padding (HF vocab_size)." + _FROM_FILE)
    max_position_embeddings: int | None = Field(
        None, ge=1, description="Longest sequence (prompt + response) the model supports (HF "
        "max_position_embeddings)." + _FROM_FILE)
    params_dtype: Literal["float32", "bfloat16"] = Field(
        "bfloat16", description="Parameter/compute dtype of the policy (float32 on CPU).")
    fp8: Literal["e4m3", "hybrid"] | None = Field(
        None, description="FP8 format for Transformer-Engine GEMMs; null = off. Needs bfloat16 and a "
        "GPU with TE.")
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise"] = Field(
        "delayed", description="FP8 scaling recipe (megatron-core TransformerConfig.fp8_recipe); used "
        "only when fp8 is set.")
    attention_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Attention dropout; 0 for RL so log-probs are deterministic.")
    hidden_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Hidden-state dropout; 0 for RL so log-probs are deterministic.")

    @model_validator(mode="after")
    def _fill_architecture(self) -> "ModelConfig":
        # A config that writes every field and whose checkpoint is gone (a resolved config kept as a
        # record) still loads; launching it fails in check_paths, which wants the config.json.
        complete = all(getattr(self, f) is not None for f in ARCH_FIELDS)
        if self.hf_path and not (complete and not (Path(self.hf_path) / "config.json").exists()):
            from_file = read_hf_architecture(self.hf_path)
            problems = []
            for name, value in from_file.items():
                ours = getattr(self, name)
                if ours is None:
                    setattr(self, name, value)
                elif ours != value:
                    problems.append(
                        f"model.{name}: {ours} disagrees with {HF_SIZE_KEYS[name]}={value} in "
                        f"{self.hf_path}/config.json, which defines the architecture; remove model.{name}")
            if problems:
                raise ConfigProblems(problems)
        if self.ffn_hidden_size is None and self.hidden_size is not None:
            self.ffn_hidden_size = 4 * self.hidden_size
        if self.num_query_groups is None and self.num_attention_heads is not None:
            self.num_query_groups = self.num_attention_heads
        return self

    def missing_architecture(self) -> list[str]:
        return [f for f in REQUIRED_ARCH if getattr(self, f) is None]
