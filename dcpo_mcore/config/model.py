"""`model` section: where the weights come from, the architecture, precision.

The architecture can be written out (tiny demo models built from scratch) or, when `hf_path` is
given, read from its `config.json`, so a production recipe names a checkpoint and nothing else.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from .base import Section
from .errors import ConfigProblems


# Our field name -> the Hugging Face config.json key it is read from.
HF_ARCH_KEYS = {
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "ffn_hidden_size": "intermediate_size",
    "num_attention_heads": "num_attention_heads",
    "num_query_groups": "num_key_value_heads",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position_embeddings",
}
# Without these the model cannot be built; the other two have megatron-style fallbacks.
REQUIRED_ARCH = ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "max_position_embeddings")


def read_hf_architecture(hf_path: str) -> dict[str, int]:
    """Architecture fields from `hf_path/config.json`; raises ConfigProblems naming model.hf_path."""
    cfg_file = Path(hf_path) / "config.json"
    try:
        hf = json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise ConfigProblems([
            f"model.hf_path={hf_path!r}: no config.json in it ({cfg_file}); point model.hf_path at a "
            "Hugging Face checkpoint directory or unset it and give the architecture fields"
        ]) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigProblems([f"model.hf_path={hf_path!r}: cannot read {cfg_file}: {exc}"]) from None
    out: dict[str, int] = {}
    for ours, theirs in HF_ARCH_KEYS.items():
        if theirs not in hf:
            continue
        value = hf[theirs]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigProblems([f"model.hf_path={hf_path!r}: {cfg_file} has {theirs}={value!r}, "
                                  f"expected a positive integer for model.{ours}; set model.{ours} explicitly"])
        out[ours] = value
    # GQA-less models omit num_key_value_heads: every head is its own group.
    if "num_query_groups" not in out and "num_attention_heads" in out:
        out["num_query_groups"] = out["num_attention_heads"]
    return out


class ModelConfig(Section):
    hf_path: str | None = Field(
        None, description="Hugging Face checkpoint directory (config.json, tokenizer, weights). Unset "
        "architecture fields are read from its config.json.")
    init_checkpoint: str | None = Field(
        None, description="megatron torch_dist checkpoint directory to initialise the policy from "
        "(the pretrain -> RL path); overrides the weights in hf_path.")
    num_layers: int | None = Field(
        None, ge=1, description="Transformer layers (HF num_hidden_layers); read from hf_path if unset.")
    hidden_size: int | None = Field(
        None, ge=1, description="Model width (HF hidden_size); read from hf_path if unset.")
    ffn_hidden_size: int | None = Field(
        None, ge=1, description="MLP inner width (HF intermediate_size); read from hf_path if unset, "
        "else 4 * hidden_size.")
    num_attention_heads: int | None = Field(
        None, ge=1, description="Query heads (HF num_attention_heads); read from hf_path if unset.")
    num_query_groups: int | None = Field(
        None, ge=1, description="Key/value heads for GQA (HF num_key_value_heads); read from hf_path "
        "if unset, else = num_attention_heads.")
    vocab_size: int | None = Field(
        None, ge=1, description="Tokenizer vocabulary size before padding (HF vocab_size); read from "
        "hf_path if unset.")
    max_position_embeddings: int | None = Field(
        None, ge=1, description="Longest sequence (prompt + response) the model supports; read from "
        "hf_path if unset.")
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
        # Explicit values win; config.json only fills the gaps, and is not read when there are none.
        arch = list(HF_ARCH_KEYS)
        if self.hf_path and any(getattr(self, f) is None for f in arch):
            for name, value in read_hf_architecture(self.hf_path).items():
                if getattr(self, name) is None:
                    setattr(self, name, value)
        if self.ffn_hidden_size is None and self.hidden_size is not None:
            self.ffn_hidden_size = 4 * self.hidden_size
        if self.num_query_groups is None and self.num_attention_heads is not None:
            self.num_query_groups = self.num_attention_heads
        return self

    def missing_architecture(self) -> list[str]:
        return [f for f in REQUIRED_ARCH if getattr(self, f) is None]
