"""The one name-and-shape mapping between HF checkpoint tensors and megatron-core GPTModel parameters.

Checkpoint conversion (both ways) and the live weight sync to SGLang both go through this module,
so a layout rule lives in exactly one place. It works on plain tensors and names and imports no
megatron: callers hand in getters, and every function is streaming (one tensor at a time), so a 14B
conversion never holds the model twice.

API
---
* :func:`hf_to_mcore_shard` - the megatron state dict of one (tp_rank, pp_rank), pulling HF tensors
  lazily through ``get_hf_tensor(name)``.
* :func:`iter_mcore_to_hf` - full HF tensors, one at a time in a stable order, from the TP shards
  returned by ``get_shards(pp_rank, local_name)``.
* :func:`mcore_params` / :func:`expected_mcore_shapes` - what one rank holds (name, per-rank shape,
  TP split dim); :func:`expected_hf_shapes` / :func:`expected_hf_names` / :func:`check_hf_names`.

Megatron names (GPTModel, ``get_gpt_layer_local_spec(normalization="RMSNorm")``), per layer ``i``::

    embedding.word_embeddings.weight                  [Vpad/TP, H]      first PP stage
    decoder.layers.{i}.input_layernorm.weight         [H]     TE: self_attention.linear_qkv.layer_norm_weight
    decoder.layers.{i}.self_attention.linear_qkv.weight  [(nq+2ng)*d/TP, H]   (+ .bias for Qwen2)
    decoder.layers.{i}.self_attention.{q,k}_layernorm.weight  [d]       Qwen3
    decoder.layers.{i}.self_attention.linear_proj.weight [H, nq*d/TP]
    decoder.layers.{i}.pre_mlp_layernorm.weight       [H]     TE: mlp.linear_fc1.layer_norm_weight
    decoder.layers.{i}.mlp.linear_fc1.weight          [2F/TP, H]
    decoder.layers.{i}.mlp.linear_fc2.weight          [H, F/TP]
    decoder.final_layernorm.weight                    [H]               last PP stage
    output_layer.weight                               [Vpad/TP, H]      last PP stage (see "tied")

Layout rules
------------
* QKV: the fused rows are, for each query group g in order, that group's nq/ng query heads, then its
  key head, then its value head (d rows each); the bias follows the same order. TP rank r holds the
  r-th contiguous 1/TP block of those rows, i.e. ng/TP whole groups. (When TP > ng, which megatron
  allows if TP is a multiple of ng, a group's block is itself split across TP/ng ranks and megatron
  all-gathers it in the forward; the rows are still the contiguous 1/TP block.)
* gate/up: rank r's ``linear_fc1`` is ``cat(gate_chunk_r, up_chunk_r)``; at TP1 it is ``cat(gate, up)``.
* Column-parallel (dim 0): qkv, fc1, embedding, output layer. Row-parallel (dim 1): linear_proj, fc2.
  Norms (q/k layernorm included) are replicated on every TP rank.
* Vocabulary: megatron rows are padded to :func:`padded_vocab_size` (V, TP) with zero rows on import;
  export cuts them off again.
* PP: stage p of P owns layers [p*L/P, (p+1)*L/P) and names them locally from ``decoder.layers.0``.
* Tied embeddings: HF has no ``lm_head.weight``. At PP1 megatron has no ``output_layer.weight`` (the
  embedding is reused). At PP>1 the last stage holds ``output_layer.weight`` as a *copy* of the
  embedding (megatron keeps the two in step by all-reducing their grads); it is filled from
  ``model.embed_tokens.weight`` on import and ignored on export (stage 0's embedding is exported).
* ``_extra_state`` entries of megatron state dicts carry no weights and are not part of this mapping.

Every HF->megatron and megatron->HF tensor is moved bit for bit (no dtype cast, no arithmetic);
the caller casts if it wants another dtype. :func:`iter_mcore_to_hf` has a no-copy mode
(``copy=False``) for consumers that copy each tensor anyway (the weight-sync packer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch

from .hf_arch import ArchSpec, padded_vocab_size

from dcpo_mcore.errors import UserError

__all__ = [
    "MappingError", "ParamSpec", "check_hf_names", "export_plan", "virtual_stage", "expected_hf_names", "expected_hf_shapes",
    "expected_mcore_shapes", "hf_to_mcore_shard", "iter_mcore_to_hf", "layer_range", "mcore_params",
]

Shape = tuple[int, ...]
# HF tensors that old checkpoints carry and that are recomputed, never mapped.
_IGNORABLE_SUFFIXES = (".rotary_emb.inv_freq",)

# Mapping kinds: how one megatron parameter is built from its HF tensors.
_COPY, _VOCAB, _ROW, _QKV, _GATE_UP = "copy", "vocab", "row", "qkv", "gate_up"
_TP_DIM = {_COPY: None, _VOCAB: 0, _ROW: 1, _QKV: 0, _GATE_UP: 0}


class MappingError(UserError, ValueError):
    """A checkpoint or shard set that does not fit the architecture (one line, names the tensor)."""


@dataclass(frozen=True)
class ParamSpec:
    """One megatron parameter as held by one rank."""

    name: str  # local name on its PP stage, e.g. "decoder.layers.0.mlp.linear_fc1.weight"
    pp_rank: int
    shape: Shape  # the per-TP-rank shape
    tp_dim: int | None  # 0 column-parallel, 1 row-parallel, None replicated


@dataclass(frozen=True)
class _Entry:
    mcore: str  # local megatron name
    pp_rank: int
    hf: tuple[str, ...]  # HF tensors it is built from, in HF export order
    kind: str
    export: bool = True  # False for the tied output-layer copy on the last PP stage


def layer_range(arch: ArchSpec, pp_size: int, pp_rank: int) -> range:
    """Global layer indices owned by PP stage ``pp_rank`` (an even, contiguous split)."""
    _check_parallel(arch, 1, pp_size)
    _check_rank("pp_rank", pp_rank, pp_size)
    per = arch.num_layers // pp_size
    return range(pp_rank * per, (pp_rank + 1) * per)


def _layer_entries(arch: ArchSpec, local: int, layer: int, pp_rank: int, te_names: bool) -> list[_Entry]:
    out: list[_Entry] = []

    def add(mcore: str, hf: tuple[str, ...], kind: str) -> None:
        out.append(_Entry(f"decoder.layers.{local}.{mcore}", pp_rank,
                          tuple(f"model.layers.{layer}.{n}" for n in hf), kind))

    add("self_attention.linear_qkv.weight", tuple(f"self_attn.{p}_proj.weight" for p in "qkv"), _QKV)
    if arch.qkv_bias:
        add("self_attention.linear_qkv.bias", tuple(f"self_attn.{p}_proj.bias" for p in "qkv"), _QKV)
    if arch.qk_norm:
        add("self_attention.q_layernorm.weight", ("self_attn.q_norm.weight",), _COPY)
        add("self_attention.k_layernorm.weight", ("self_attn.k_norm.weight",), _COPY)
    add("self_attention.linear_proj.weight", ("self_attn.o_proj.weight",), _ROW)
    # TE fuses each norm into the linear layer that follows it.
    add("self_attention.linear_qkv.layer_norm_weight" if te_names else "input_layernorm.weight",
        ("input_layernorm.weight",), _COPY)
    add("mlp.linear_fc1.layer_norm_weight" if te_names else "pre_mlp_layernorm.weight",
        ("post_attention_layernorm.weight",), _COPY)
    add("mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"), _GATE_UP)
    add("mlp.linear_fc2.weight", ("mlp.down_proj.weight",), _ROW)
    return out


def _stage_entries(arch: ArchSpec, pp_size: int, pp_rank: int, te_names: bool) -> list[_Entry]:
    out = []
    if pp_rank == 0:
        out.append(_Entry("embedding.word_embeddings.weight", 0, ("model.embed_tokens.weight",), _VOCAB))
    for local, layer in enumerate(layer_range(arch, pp_size, pp_rank)):
        out.extend(_layer_entries(arch, local, layer, pp_rank, te_names))
    if pp_rank == pp_size - 1:
        out.append(_Entry("decoder.final_layernorm.weight", pp_rank, ("model.norm.weight",), _COPY))
        if not arch.tie_word_embeddings:
            out.append(_Entry("output_layer.weight", pp_rank, ("lm_head.weight",), _VOCAB))
        elif pp_size > 1:
            out.append(_Entry("output_layer.weight", pp_rank, ("model.embed_tokens.weight",), _VOCAB,
                              export=False))
    return out


def expected_hf_shapes(arch: ArchSpec) -> dict[str, Shape]:
    """Every HF tensor name of the architecture with its shape, in the stable export order."""
    H, F, V, d = arch.hidden_size, arch.ffn_hidden_size, arch.vocab_size, arch.head_dim
    shapes: dict[str, Shape] = {"model.embed_tokens.weight": (V, H)}
    for layer in range(arch.num_layers):
        h = f"model.layers.{layer}."
        for p, rows in (("q", arch.q_size), ("k", arch.kv_size), ("v", arch.kv_size)):
            shapes[f"{h}self_attn.{p}_proj.weight"] = (rows, H)
        if arch.qkv_bias:
            for p, rows in (("q", arch.q_size), ("k", arch.kv_size), ("v", arch.kv_size)):
                shapes[f"{h}self_attn.{p}_proj.bias"] = (rows,)
        if arch.qk_norm:
            shapes[h + "self_attn.q_norm.weight"] = (d,)
            shapes[h + "self_attn.k_norm.weight"] = (d,)
        shapes[h + "self_attn.o_proj.weight"] = (H, arch.q_size)
        shapes[h + "input_layernorm.weight"] = (H,)
        shapes[h + "post_attention_layernorm.weight"] = (H,)
        shapes[h + "mlp.gate_proj.weight"] = (F, H)
        shapes[h + "mlp.up_proj.weight"] = (F, H)
        shapes[h + "mlp.down_proj.weight"] = (H, F)
    shapes["model.norm.weight"] = (H,)
    if not arch.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, H)
    return shapes


def expected_hf_names(arch: ArchSpec) -> list[str]:
    """HF tensor names in the order :func:`iter_mcore_to_hf` yields them."""
    return list(expected_hf_shapes(arch))


def check_hf_names(names: Iterable[str], arch: ArchSpec) -> None:
    """Raise :class:`MappingError` if a checkpoint's tensor names are missing some or have extras.

    Tolerated extras: ``*.rotary_emb.inv_freq`` (old checkpoints) and, for tied embeddings, an
    ``lm_head.weight`` duplicate (some exporters write it anyway; it is not read).
    """
    expected = set(expected_hf_shapes(arch))
    given = set(names)
    missing = [n for n in expected_hf_names(arch) if n not in given]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise MappingError(f"missing HF tensor {missing[0]!r}{more}")
    extra = sorted(n for n in given - expected if not n.endswith(_IGNORABLE_SUFFIXES)
                   and not (arch.tie_word_embeddings and n == "lm_head.weight"))
    if extra:
        raise MappingError(f"{len(extra)} unexpected HF tensor(s) for {arch.family}: {', '.join(extra[:5])}"
                           + (", ..." if len(extra) > 5 else ""))


def mcore_params(arch: ArchSpec, tp_size: int = 1, pp_size: int = 1, pp_rank: int = 0,
                 te_names: bool = False) -> list[ParamSpec]:
    """The parameters one rank of stage ``pp_rank`` holds, with per-rank shapes and TP split dims."""
    _check_parallel(arch, tp_size, pp_size)
    hf_shapes = expected_hf_shapes(arch)
    vpad = padded_vocab_size(arch.vocab_size, tp_size)
    out = []
    for e in _stage_entries(arch, pp_size, pp_rank, te_names):
        full = hf_shapes[e.hf[0]]
        if e.kind == _VOCAB:
            full = (vpad,) + full[1:]
        elif e.kind in (_QKV, _GATE_UP):
            full = (sum(hf_shapes[n][0] for n in e.hf),) + full[1:]
        dim = _TP_DIM[e.kind]
        shape = full if dim is None else tuple(s // tp_size if i == dim else s for i, s in enumerate(full))
        out.append(ParamSpec(e.mcore, pp_rank, shape, dim))
    return out


def expected_mcore_shapes(arch: ArchSpec, tp_size: int = 1, pp_size: int = 1, pp_rank: int = 0,
                          te_names: bool = False) -> dict[str, Shape]:
    """``{local megatron name: per-rank shape}`` of one rank (no ``_extra_state`` entries)."""
    return {p.name: p.shape for p in mcore_params(arch, tp_size, pp_size, pp_rank, te_names)}


def virtual_stage(v: int, pp: int, pp_rank: int) -> int:
    return v * pp + pp_rank


def export_plan(arch: ArchSpec, tp: int, num_stages: int, te_names: bool = False) -> list[tuple[int, ParamSpec]]:
    """Every exported megatron parameter, in the order ``iter_mcore_to_hf`` asks for them.

    Senders and the receiver both follow this list, and the receiver checks each request against it.
    The only parameter not exported is the last stage's copy of a tied embedding (stage 0's embedding
    is the HF ``embed_tokens``).
    """
    plan = []
    for s in range(num_stages):
        for spec in mcore_params(arch, tp, num_stages, s, te_names):
            if not (arch.tie_word_embeddings and spec.name == "output_layer.weight"):
                plan.append((s, spec))
    return plan


def hf_to_mcore_shard(get_hf_tensor: Callable[[str], torch.Tensor], arch: ArchSpec, tp_rank: int = 0,
                      tp_size: int = 1, pp_rank: int = 0, pp_size: int = 1, *, te_names: bool = False,
                      hf_names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The megatron state dict of rank (tp_rank, pp_rank), in :func:`mcore_params` order.

    ``get_hf_tensor(name)`` is called once per needed HF tensor (e.g. ``safe_open(...).get_tensor``
    or ``dict.__getitem__``); only this stage's tensors are requested. A sliced or padded shard is
    a fresh tensor, never a view into the full HF tensor, so that can be freed right after; tensors
    needing no change (norms, TP1 weights) are returned as given. Pass ``hf_names`` (all names in the
    checkpoint) to also reject extra tensors; missing ones are always reported by name.
    """
    _check_parallel(arch, tp_size, pp_size)
    _check_rank("tp_rank", tp_rank, tp_size)
    _check_rank("pp_rank", pp_rank, pp_size)
    if hf_names is not None:
        check_hf_names(hf_names, arch)
    hf_shapes = expected_hf_shapes(arch)
    out = {}
    for e in _stage_entries(arch, pp_size, pp_rank, te_names):
        tensors = [_fetch_hf(get_hf_tensor, n, hf_shapes[n]) for n in e.hf]
        _same_dtype(e.hf, tensors)
        out[e.mcore] = _to_shard(e.kind, tensors, arch, tp_rank, tp_size)
    return out


def iter_mcore_to_hf(get_shards: Callable[[int, str], Sequence[torch.Tensor]], arch: ArchSpec,
                     tp_size: int = 1, pp_size: int = 1, *, te_names: bool = False,
                     pp_ranks: Iterable[int] | None = None, copy: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(hf_name, full tensor)`` in :func:`expected_hf_names` order (restricted to ``pp_ranks``).

    ``get_shards(pp_rank, local_name)`` returns the TP shards of one megatron parameter in TP-rank
    order; for replicated parameters (norms) a single tensor is enough and only the first is used.
    It is called once per megatron parameter, just before that parameter's HF tensors are yielded,
    so a caller can gather shards lazily. Yielded tensors are contiguous and never share memory with
    each other; a tensor needing no rearrangement (a norm, a TP1 projection) may be the very tensor
    ``get_shards`` returned, so copy it if the parameter will change before it is consumed.

    ``copy=False`` (for a consumer that copies every tensor anyway, e.g. the weight-sync bucket
    packer's ``copy_``): no copy is made that the HF tensor does not need. Gate/up halves and the
    vocabulary cut are then views into the shard (contiguous, sharing memory with each other and
    with the shard), valid until the shards change; tensors that have no view with the HF shape
    (q/k/v, cut out of the interleaved fused rows; TP concatenations) are still materialised once.
    Names, order, shapes, dtypes and values are the same in both modes.
    """
    _check_parallel(arch, tp_size, pp_size)
    stages = range(pp_size) if pp_ranks is None else sorted(set(pp_ranks))
    for p in stages:
        _check_rank("pp_rank", p, pp_size)
        specs = {s.name: s for s in mcore_params(arch, tp_size, pp_size, p, te_names)}
        for e in _stage_entries(arch, pp_size, p, te_names):
            if not e.export:
                continue
            shards = _fetch_shards(get_shards, specs[e.mcore], tp_size)
            yield from zip(e.hf, _from_shards(e.kind, shards, arch, fresh=copy))


# ---------------------------------------------------------------------------------------------
# HF -> megatron, one parameter


def _to_shard(kind: str, ts: list[torch.Tensor], arch: ArchSpec, r: int, tp: int) -> torch.Tensor:
    if kind == _COPY:
        return ts[0]
    if kind == _ROW:
        return ts[0] if tp == 1 else _fresh(ts[0].chunk(tp, dim=1)[r])
    if kind == _GATE_UP:
        return torch.cat([ts[0].chunk(tp, dim=0)[r], ts[1].chunk(tp, dim=0)[r]], dim=0)
    if kind == _VOCAB:
        return _vocab_rows(ts[0], padded_vocab_size(arch.vocab_size, tp), r, tp)
    return _qkv_rows(ts, arch, r, tp)


def _vocab_rows(full: torch.Tensor, vpad: int, r: int, tp: int) -> torch.Tensor:
    """Rows [r*vpad/tp, (r+1)*vpad/tp) of ``full`` zero-padded to ``vpad`` rows, without padding it all."""
    per, v = vpad // tp, full.shape[0]
    lo, hi = r * per, (r + 1) * per
    if lo == 0 and hi == v:
        return full
    real = full[lo:min(hi, v)] if lo < v else full[:0]
    pad = full.new_zeros((hi - lo - real.shape[0],) + tuple(full.shape[1:]))
    return torch.cat([real, pad], dim=0)


def _qkv_rows(ts: list[torch.Tensor], arch: ArchSpec, r: int, tp: int) -> torch.Tensor:
    """TP rank r's block of the per-group fused [q heads of g, k_g, v_g]* rows, building only its groups."""
    q, k, v = ts
    d, hpg, ng = arch.head_dim, arch.heads_per_group, arch.num_query_groups
    block = (hpg + 2) * d  # fused rows of one query group
    per = ng * block // tp
    lo, hi = r * per, (r + 1) * per
    g0, g1 = lo // block, -(-hi // block)  # groups overlapping the rank's rows
    parts = []
    for g in range(g0, g1):
        parts += [q[g * hpg * d:(g + 1) * hpg * d], k[g * d:(g + 1) * d], v[g * d:(g + 1) * d]]
    fused, a, b = torch.cat(parts, dim=0), lo - g0 * block, hi - g0 * block
    return fused if (a, b) == (0, fused.shape[0]) else fused[a:b].clone()  # TP > ng: part of a group


# ---------------------------------------------------------------------------------------------
# megatron -> HF, one parameter


def _from_shards(kind: str, shards: list[torch.Tensor], arch: ArchSpec, fresh: bool = True) -> list[torch.Tensor]:
    """The HF tensors of one megatron parameter. ``fresh=False``: views where a view has the HF shape
    (see :func:`iter_mcore_to_hf`'s ``copy``); otherwise every part that is cut out of a shard is a copy."""
    own = _fresh if fresh else (lambda t: t)
    if kind == _COPY:
        return [shards[0]]
    if kind == _ROW:
        return [shards[0] if len(shards) == 1 else torch.cat(shards, dim=1)]
    if kind == _VOCAB:
        full = shards[0] if len(shards) == 1 else torch.cat(shards, dim=0)
        return [full if full.shape[0] == arch.vocab_size else own(full[:arch.vocab_size])]
    if kind == _GATE_UP:
        halves = [s.chunk(2, dim=0) for s in shards]
        return [torch.cat([h[i] for h in halves], dim=0) if len(shards) > 1 else own(halves[0][i])
                for i in (0, 1)]
    fused = shards[0] if len(shards) == 1 else torch.cat(shards, dim=0)
    d, hpg, ng = arch.head_dim, arch.heads_per_group, arch.num_query_groups
    grouped = fused.reshape((ng, (hpg + 2) * d) + tuple(fused.shape[1:]))
    q, k, v = grouped.split([hpg * d, d, d], dim=1)
    return [_fresh(t).view((-1,) + tuple(fused.shape[1:])) for t in (q, k, v)]


def _fetch_shards(get_shards, spec: ParamSpec, tp: int) -> list[torch.Tensor]:
    where = f"megatron tensor {spec.name!r} (pp_rank {spec.pp_rank})"
    try:
        shards = list(get_shards(spec.pp_rank, spec.name))
    except KeyError:
        raise MappingError(f"missing {where}") from None
    if spec.tp_dim is None:  # replicated: any one copy will do
        if not shards:
            raise MappingError(f"{where}: expected at least 1 TP shard, got 0")
        shards = shards[:1]
    elif len(shards) != tp:
        raise MappingError(f"{where}: expected {tp} TP shard(s), got {len(shards)}")
    for i, s in enumerate(shards):
        if tuple(s.shape) != spec.shape:
            raise MappingError(f"shape mismatch for {where} TP shard {i}: expected {spec.shape}, "
                               f"got {tuple(s.shape)}")
    _same_dtype([spec.name] * len(shards), shards)
    return shards


# ---------------------------------------------------------------------------------------------
# helpers


def _fetch_hf(get_hf_tensor, name: str, shape: Shape) -> torch.Tensor:
    try:
        t = get_hf_tensor(name)
    except KeyError:
        raise MappingError(f"missing HF tensor {name!r}") from None
    if tuple(t.shape) != shape:
        raise MappingError(f"shape mismatch for HF tensor {name!r}: expected {shape}, got {tuple(t.shape)}")
    return t


def _same_dtype(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    # torch.cat would silently promote mixed dtypes, breaking the bit-exact guarantee.
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise MappingError(f"tensors {', '.join(sorted(set(names)))} mix dtypes {sorted(map(str, dtypes))}")


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy that owns its memory (one copy, whether or not ``t`` is contiguous)."""
    return t.contiguous() if not t.is_contiguous() else t.clone()


def _check_rank(what: str, rank: int, size: int) -> None:
    if not 0 <= rank < size:
        raise MappingError(f"{what} {rank} is out of range for size {size}")


def _check_parallel(arch: ArchSpec, tp: int, pp: int) -> None:
    if tp < 1 or pp < 1:
        raise MappingError(f"tp_size and pp_size must be >= 1, got {tp} and {pp}")
    if arch.num_layers % pp:
        raise MappingError(f"pp_size {pp} does not divide num_layers {arch.num_layers}")
    for what, n in (("num_attention_heads", arch.num_attention_heads), ("ffn_hidden_size", arch.ffn_hidden_size)):
        if n % tp:
            raise MappingError(f"tp_size {tp} does not divide {what} {n}")
    ng = arch.num_query_groups
    # Megatron's own rule: groups split over ranks, or (TP > ng) each group spread over TP/ng ranks.
    if ng % tp and (tp % ng or ((arch.heads_per_group + 2) * arch.head_dim) % (tp // ng)):
        raise MappingError(f"tp_size {tp} does not divide num_key_value_heads {ng} (and is not a "
                           "multiple of it that splits each q/k/v group evenly)")
