"""Wire types for the SGLang HTTP API (sglang 0.5.23), as pydantic models.

Request bodies are serialised with :meth:`WireModel.body` (None fields left out, so SGLang applies
its own defaults). Field names and defaults follow ``sglang/srt/managers/io_struct.py`` and
``sampling/sampling_params.py`` of the pinned release, with two deliberate differences:

* ``InitWeightsUpdateGroupRequest.backend`` has NO default. SGLang defaults it to "nccl", which a
  CPU server answers with 400 while the trainer side hangs in its rendezvous; callers must say
  "gloo" (CPU) or "nccl" (GPU).
* Unknown fields are rejected here (``extra="forbid"``), as SGLang's ``/generate`` contract check
  does, so a typo fails before anything is sent.

:class:`GenerateResponse` is parsed from one element of ``/generate``'s JSON answer and flattens
``meta_info``: token ids, per-token logprobs, finish reason and the weight version that produced
the sample.
"""
from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "BeginWeightUpdateRequest", "DestroyWeightsUpdateGroupRequest", "EndWeightUpdateRequest",
    "FinishReason", "GenerateRequest", "GenerateResponse", "InitWeightsUpdateGroupRequest",
    "SamplingParams", "UpdateWeightVersionRequest", "UpdateWeightsFromDistributedRequest",
    "WeightUpdateResponse", "WeightVersionSpan", "WireModel",
]

# torch attribute names SGLang accepts in `dtypes` (it does getattr(torch, name)).
TORCH_DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64", "float8_e4m3fn", "float8_e5m2",
                     "int8", "uint8", "int32", "int64", "bool")


class WireModel(BaseModel):
    """Base of every request/response model: unknown fields are an error; JSON via :meth:`body`."""

    model_config = ConfigDict(extra="forbid")

    def body(self) -> dict[str, Any]:
        """The JSON body to POST: fields that are None are left out (SGLang then uses its default)."""
        return self.model_dump(mode="json", exclude_none=True)


# --------------------------------------------------------------------------------------------------
# /generate
# --------------------------------------------------------------------------------------------------
class SamplingParams(WireModel):
    """``sampling_params`` of ``/generate``. None = SGLang's default."""

    max_new_tokens: int | None = Field(None, ge=0, description="Longest response in tokens.")
    temperature: float | None = Field(None, ge=0.0, description="0 = greedy.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus mass in (0, 1].")
    top_k: int | None = Field(None, description="-1 = off, else >= 1.")
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    stop: list[str] | None = Field(None, description="Stop strings (matched on detokenised text).")
    stop_token_ids: list[int] | None = Field(None, description="Token ids that end a response.")
    ignore_eos: bool | None = None
    min_new_tokens: int | None = Field(None, ge=0)
    skip_special_tokens: bool | None = None
    n: int | None = Field(
        None, ge=1, description="Samples per request. The client sends one request per sample "
        "instead (n stays unset): per-sample retry, seed and routing.")
    sampling_seed: int | None = Field(
        None, ge=-(2**63), le=2**63 - 1, description="Per-request sampling seed. SGLang 0.5.23 honours "
        "it only with --enable-deterministic-inference (GPU attention backends fa3/fa4/flashinfer/"
        "triton); otherwise it is accepted and ignored.")

    @classmethod
    def from_config(cls, rollout_cfg: Any, **overrides: Any) -> "SamplingParams":
        """The rollout section's sampling settings (temperature, top_p, top_k, max_new_tokens)."""
        return cls(**{"temperature": rollout_cfg.temperature, "top_p": rollout_cfg.top_p,
                      "top_k": rollout_cfg.top_k, "max_new_tokens": rollout_cfg.max_new_tokens, **overrides})

    @model_validator(mode="after")
    def _check(self) -> "SamplingParams":
        if self.top_k is not None and self.top_k != -1 and self.top_k < 1:
            raise ValueError(f"top_k must be -1 (off) or >= 1, got {self.top_k}")
        return self


class GenerateRequest(WireModel):
    """Body of ``POST /generate`` for one prompt (one sample unless ``sampling_params.n`` > 1)."""

    input_ids: list[int] | None = Field(None, description="Prompt token ids (preferred: exact tokens).")
    text: str | None = Field(None, description="Prompt text (tokenised by the server).")
    sampling_params: SamplingParams = Field(default_factory=SamplingParams)
    return_logprob: bool = Field(True, description="Return per-token logprobs in meta_info.")
    logprob_start_len: int | None = Field(
        None, description="First prompt position with an input logprob; 0 = the whole prompt, "
        "-1 = none (SGLang's default).")
    rid: str | None = Field(None, description="Request id (lets /abort_request cancel it).")
    stream: bool = False

    @model_validator(mode="after")
    def _one_prompt(self) -> "GenerateRequest":
        if (self.input_ids is None) == (self.text is None):
            raise ValueError("give exactly one of input_ids and text")
        if self.input_ids is not None and not self.input_ids:
            raise ValueError("input_ids is empty")
        if self.stream:
            raise ValueError("streaming responses are not supported by this client")
        return self


class FinishReason(BaseModel):
    """``meta_info.finish_reason``: type "length" | "stop" | "abort"; ``matched`` = stop token/string."""

    model_config = ConfigDict(extra="allow")
    type: str
    matched: int | str | list[int] | None = None
    length: int | None = None
    message: str | None = None


class WeightVersionSpan(BaseModel):
    """Output tokens [start, end) were generated with weights ``version`` (a sample can straddle
    an update when requests are not aborted)."""

    model_config = ConfigDict(extra="allow")
    version: str
    start: int
    end: int


def _logprob_column(entries: list[Any] | None) -> tuple[list[float | None], list[int]]:
    """SGLang reports each token as [logprob, token_id, text-or-None]; split the columns."""
    logprobs, ids = [], []
    for entry in entries or []:
        logprobs.append(None if entry[0] is None else float(entry[0]))
        ids.append(int(entry[1]))
    return logprobs, ids


class GenerateResponse(BaseModel):
    """One sample, flattened from an element of ``/generate``'s answer (see :meth:`from_wire`)."""

    model_config = ConfigDict(extra="forbid")
    output_ids: list[int]
    text: str | None = None
    output_logprobs: list[float] | None = Field(
        None, description="logprob of each output token under the serving weights (return_logprob).")
    input_ids: list[int] | None = Field(
        None, description="Prompt token ids the input logprobs refer to (from logprob_start_len on).")
    input_logprobs: list[float | None] | None = Field(
        None, description="Prompt-token logprobs; the prompt's first token has None.")
    finish_reason: FinishReason | None = None
    weight_version: str | None = None
    weight_versions: list[WeightVersionSpan] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    rid: str | None = None

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> "GenerateResponse":
        """Parse one element of ``/generate``'s JSON; raises ValueError on an inconsistent answer."""
        if not isinstance(raw, dict) or "output_ids" not in raw or not isinstance(raw.get("meta_info"), dict):
            raise ValueError(f"not a /generate sample (no output_ids/meta_info): {str(raw)[:200]}")
        meta = raw["meta_info"]
        out_lp, out_lp_ids = _logprob_column(meta.get("output_token_logprobs"))
        in_lp, in_ids = _logprob_column(meta.get("input_token_logprobs"))
        output_ids = list(raw.get("output_ids") or [])
        has_lp = "output_token_logprobs" in meta
        if has_lp and out_lp_ids != output_ids:
            raise ValueError(f"output_token_logprobs token ids {out_lp_ids[:8]}... do not match "
                             f"output_ids {output_ids[:8]}...")
        if has_lp and any(v is None or math.isnan(v) for v in out_lp):
            raise ValueError("output_token_logprobs contains a missing or NaN logprob")
        finish = meta.get("finish_reason")
        return cls(
            output_ids=output_ids, text=raw.get("text"),
            output_logprobs=[float(v) for v in out_lp] if has_lp else None,
            input_ids=in_ids if "input_token_logprobs" in meta else None,
            input_logprobs=in_lp if "input_token_logprobs" in meta else None,
            finish_reason=FinishReason(**finish) if isinstance(finish, dict) else None,
            weight_version=meta.get("weight_version"),
            weight_versions=meta.get("weight_versions"),
            prompt_tokens=meta.get("prompt_tokens"), completion_tokens=meta.get("completion_tokens"),
            cached_tokens=meta.get("cached_tokens"), rid=meta.get("id"),
        )

    @property
    def versions_seen(self) -> set[str | None]:
        """Every weight version that made a token of this sample (two when a push paused it mid-way);
        the final ``weight_version`` alone when the server reports no spans."""
        spans = {span.version for span in self.weight_versions or []}
        return spans | {self.weight_version} if spans else {self.weight_version}

    @property
    def finished_by(self) -> str | None:
        """"length", "stop" or "abort" (None if the server sent no finish reason)."""
        return None if self.finish_reason is None else self.finish_reason.type


# --------------------------------------------------------------------------------------------------
# Weight update endpoints (the broadcast itself lives in dcpo_mcore/sync; these are the HTTP halves)
# --------------------------------------------------------------------------------------------------
class InitWeightsUpdateGroupRequest(WireModel):
    """``POST /init_weights_update_group``: the server joins the trainer's broadcast group as rank
    ``rank_offset + tp_rank`` through a TCPStore rendezvous at master_address:master_port."""

    master_address: str
    master_port: int = Field(ge=1, le=65535)
    rank_offset: int = Field(ge=1, description="Rank of this server's TP rank 0 (trainer is rank 0).")
    world_size: int = Field(ge=2)
    group_name: str = "weight_update_group"
    backend: Literal["gloo", "nccl"] = Field(
        description="ALWAYS explicit: 'gloo' for a CPU server, 'nccl' for GPU (SGLang's default "
        "'nccl' makes a CPU server answer 400 and the trainer hang).")


class BeginWeightUpdateRequest(WireModel):
    """``POST /begin_weight_update``: mandatory in 0.5.x before any update (else they return 400)."""

    selector: Literal["target", "draft", "all"] = "all"


class UpdateWeightsFromDistributedRequest(WireModel):
    """``POST /update_weights_from_distributed``: the server receives one ``broadcast(src=0)`` per
    name in list order (or one flattened uint8 bucket with ``load_format="flattened_bucket"``)."""

    names: list[str] = Field(min_length=1, description="Hugging Face checkpoint names.")
    dtypes: list[str] = Field(description="torch attribute names, e.g. 'float32', 'bfloat16'.")
    shapes: list[list[int]]
    group_name: str = "weight_update_group"
    flush_cache: bool = True
    abort_all_requests: bool = False
    weight_version: str | None = Field(None, description="Set the server's weight version on success.")
    load_format: Literal["flattened_bucket"] | None = Field(
        None, description="None: one broadcast per tensor; 'flattened_bucket': one uint8 buffer of "
        "all tensors, each flatten().view(uint8), concatenated in name order.")
    selector: Literal["target", "draft", "all"] = "all"
    torch_empty_cache: bool = False

    @model_validator(mode="after")
    def _check(self) -> "UpdateWeightsFromDistributedRequest":
        if not len(self.names) == len(self.dtypes) == len(self.shapes):
            raise ValueError(f"names/dtypes/shapes lengths differ: {len(self.names)}/{len(self.dtypes)}/"
                             f"{len(self.shapes)}")
        bad = sorted({d for d in self.dtypes if d not in TORCH_DTYPE_NAMES})
        if bad:
            raise ValueError(f"unknown dtype name(s) {bad}; use torch attribute names like 'float32'")
        if len(set(self.names)) != len(self.names):
            raise ValueError("duplicate names")
        return self


class EndWeightUpdateRequest(WireModel):
    """``POST /end_weight_update``: closes the session opened by begin_weight_update. Empty body."""


class DestroyWeightsUpdateGroupRequest(WireModel):
    """``POST /destroy_weights_update_group``."""

    group_name: str = "weight_update_group"


class UpdateWeightVersionRequest(WireModel):
    """``POST /update_weight_version``: relabel the serving weights (reported in every sample)."""

    new_version: str = Field(min_length=1)
    abort_all_requests: bool = Field(True, description="Abort running requests first (SGLang default).")


class WeightUpdateResponse(BaseModel):
    """``{"success": bool, "message": str}`` (HTTP 200 on success, 400 on failure)."""

    model_config = ConfigDict(extra="allow")
    success: bool
    message: str = ""
