"""The architecture of a Hugging Face Qwen2 / Qwen3 / Llama checkpoint, read from its ``config.json``.

:class:`ArchSpec` is the single description of a model's shape that the weight mapping
(:mod:`dcpo_mcore.engine.hf_mapping`), the megatron model builder and the SGLang weight sync share.
It is read with :meth:`ArchSpec.from_hf_config` from a checkpoint directory, a ``config.json`` path,
a dict, or a ``transformers`` config object.

Config layouts handled (transformers 4 wrote the first, transformers 5 writes the second)::

    "rope_theta": 500000.0, "rope_scaling": {"rope_type"|"type": "llama3", "factor": 8.0, ...}
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, ...}

and ``torch_dtype`` (transformers 4) or ``dtype`` (transformers 5).

Only what megatron-core's GPT model with RMSNorm, SwiGLU and RoPE can express is accepted; anything
else (bias on ``o_proj``/MLP, sliding-window attention, YaRN, ...) is refused with a one-line
:class:`ArchError` instead of being silently mis-converted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from dcpo_mcore.errors import UserError

__all__ = ["ArchError", "ArchSpec", "HF_SIZE_KEYS", "RopeScaling", "SUPPORTED_ARCHITECTURES", "padded_vocab_size"]

# HF `architectures` entry -> our family name; `model_type` is the family name itself.
SUPPORTED_ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "LlamaForCausalLM": "llama",
}
_FAMILIES = tuple(SUPPORTED_ARCHITECTURES.values())
# ArchSpec field (also the name in the config's `model` section) -> config.json key, for the integer
# sizes. The one table of these names: the config, the demo's model writer and the reader below use it.
HF_SIZE_KEYS = {
    "num_layers": "num_hidden_layers",
    "hidden_size": "hidden_size",
    "ffn_hidden_size": "intermediate_size",
    "num_attention_heads": "num_attention_heads",
    "num_query_groups": "num_key_value_heads",  # optional in config.json: absent = one group per head
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position_embeddings",
}
_REQUIRED_INTS = {ours: theirs for ours, theirs in HF_SIZE_KEYS.items() if ours != "num_query_groups"}
# Defaults of the three transformers config classes, used when an (old) config.json omits a key.
_DEFAULT_RMS_EPS = 1e-6
_DEFAULT_ROPE_THETA = 10000.0


class ArchError(UserError, ValueError):
    """An HF config that cannot be read or that megatron-core's GPT model cannot express."""


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style RoPE frequency scaling (``rope_type: llama3``), the only scaling supported."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class ArchSpec:
    """Shape and flavour of a dense decoder-only HF model (see module docstring for the sources)."""

    family: str  # "qwen2" | "qwen3" | "llama"
    num_layers: int  # num_hidden_layers
    hidden_size: int
    ffn_hidden_size: int  # intermediate_size (the SwiGLU inner width F)
    num_attention_heads: int  # query heads nq
    num_query_groups: int  # num_key_value_heads ng
    head_dim: int  # d; explicit `head_dim` if given (Qwen3), else hidden_size / heads
    vocab_size: int  # HF vocab size, before any megatron padding
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    tie_word_embeddings: bool  # no lm_head.weight in HF, no output_layer.weight in megatron (PP1)
    qkv_bias: bool  # bias on q/k/v projections (Qwen2)
    qk_norm: bool  # RMSNorm on each q and k head (Qwen3)
    torch_dtype: str | None  # "bfloat16", "float32", ... as written in config.json

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                     "num_query_groups", "head_dim", "vocab_size", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArchError(f"{name} must be a positive integer, got {value!r}")
        if self.family not in _FAMILIES:
            raise ArchError(f"family {self.family!r} is not supported; supported: {', '.join(_FAMILIES)}")
        if self.num_attention_heads % self.num_query_groups:
            raise ArchError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_query_groups})")

    @property
    def heads_per_group(self) -> int:
        """Query heads sharing one key/value head (GQA)."""
        return self.num_attention_heads // self.num_query_groups

    @property
    def q_size(self) -> int:
        """Rows of HF ``q_proj`` (= columns of ``o_proj``)."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Rows of HF ``k_proj`` and of ``v_proj``."""
        return self.num_query_groups * self.head_dim

    @classmethod
    def from_hf_config(cls, source: str | Path | Mapping[str, Any] | Any) -> "ArchSpec":
        """Read a checkpoint directory, a ``config.json`` path, a dict or a transformers config."""
        cfg = _load_config(source)
        family = _family(cfg)
        ints = {ours: _positive_int(cfg, theirs) for ours, theirs in _REQUIRED_INTS.items()}
        heads = ints["num_attention_heads"]
        groups = _positive_int(cfg, "num_key_value_heads") if cfg.get("num_key_value_heads") is not None else heads
        _check_unsupported(cfg, family)
        rope_theta, rope_scaling = _rope(cfg)
        return cls(
            family=family, **ints, num_query_groups=groups,
            head_dim=_head_dim(cfg, ints["hidden_size"], heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", _DEFAULT_RMS_EPS)),
            rope_theta=rope_theta, rope_scaling=rope_scaling,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=family == "qwen2",
            qk_norm=family == "qwen3",
            torch_dtype=_dtype_name(cfg.get("dtype", cfg.get("torch_dtype"))),
        )


def padded_vocab_size(vocab_size: int, tp_size: int, multiple: int = 128) -> int:
    """Smallest multiple of ``tp_size * multiple`` that is >= ``vocab_size``.

    Megatron splits the vocabulary rows evenly over TP ranks, and a multiple of 128 per rank keeps the
    GEMMs aligned; the extra rows are zeros on import and cut off on export.
    """
    if vocab_size < 1 or tp_size < 1 or multiple < 1:
        raise ValueError(f"vocab_size, tp_size and multiple must be >= 1, got {vocab_size}, {tp_size}, {multiple}")
    step = tp_size * multiple
    return -(-vocab_size // step) * step


def _load_config(source: Any) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return dict(source)
    if hasattr(source, "to_dict") and callable(source.to_dict):  # a transformers PretrainedConfig
        return dict(source.to_dict())
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArchError(f"no HF config at {path}; pass a checkpoint directory or its config.json") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ArchError(f"cannot read HF config {path}: {exc}") from None
    if not isinstance(cfg, dict):
        raise ArchError(f"HF config {path} is not a JSON object")
    return cfg


def _family(cfg: Mapping[str, Any]) -> str:
    supported = ", ".join(f"{a} ({f})" for a, f in SUPPORTED_ARCHITECTURES.items())
    archs = cfg.get("architectures") or []
    for arch in archs:
        if arch in SUPPORTED_ARCHITECTURES:
            return SUPPORTED_ARCHITECTURES[arch]
    model_type = cfg.get("model_type")
    if not archs and model_type in _FAMILIES:
        return model_type
    found = ", ".join(archs) if archs else f"model_type={model_type!r}"
    raise ArchError(f"unsupported architecture {found}; supported: {supported}")


def _positive_int(cfg: Mapping[str, Any], key: str) -> int:
    if key not in cfg or cfg[key] is None:
        raise ArchError(f"HF config is missing {key!r}")
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArchError(f"HF config has {key}={value!r}, expected a positive integer")
    return value


def _head_dim(cfg: Mapping[str, Any], hidden: int, heads: int) -> int:
    if cfg.get("head_dim") is not None:  # Qwen3 (and transformers-5 Llama) write it explicitly
        return _positive_int(cfg, "head_dim")
    if hidden % heads:
        raise ArchError(f"hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads}) "
                        "and the config has no head_dim")
    return hidden // heads


def _check_unsupported(cfg: Mapping[str, Any], family: str) -> None:
    # Each of these changes the network in a way megatron's GPT model (local or TE spec) cannot
    # represent, so converting would silently produce a different model.
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ArchError(f"hidden_act={act!r} is not supported; only SwiGLU with 'silu' is")
    if family in ("qwen3", "llama") and cfg.get("attention_bias"):
        raise ArchError(f"{family} with attention_bias=true is not supported: it also puts a bias on "
                        "o_proj, which megatron's add_qkv_bias does not cover")
    if cfg.get("mlp_bias"):
        raise ArchError("mlp_bias=true is not supported (megatron GPT MLPs here have no bias)")
    if cfg.get("use_sliding_window"):
        raise ArchError("use_sliding_window=true is not supported; megatron uses full causal attention")


def _rope(cfg: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    """(rope_theta, llama3 scaling or None) from either the old or the transformers-5 layout."""
    params = cfg.get("rope_parameters")
    if isinstance(params, Mapping) and params and all(isinstance(v, Mapping) for v in params.values()):
        # Per-layer-type layout ({"full_attention": {...}, ...}); all our layers are full attention.
        params = params.get("full_attention")
    if not params:
        params = dict(cfg.get("rope_scaling") or {})
        if "rope_theta" in cfg:
            params["rope_theta"] = cfg["rope_theta"]
    theta = float(params.get("rope_theta", cfg.get("rope_theta", _DEFAULT_ROPE_THETA)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in (None, "default"):
        return theta, None
    if kind != "llama3":
        raise ArchError(f"rope scaling type {kind!r} is not supported; supported: none (default) or llama3")
    try:
        scaling = RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    except KeyError as exc:
        raise ArchError(f"llama3 rope scaling is missing {exc.args[0]!r}") from None
    return theta, scaling


def _dtype_name(value: Any) -> str | None:
    if value is None:
        return None
    name = str(value)
    return name[len("torch."):] if name.startswith("torch.") else name
