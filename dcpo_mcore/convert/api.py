"""The three conversions as Python functions (the CLI is a thin layer over these).

Each function checks everything it can *before* starting a rank (the HF config, the safetensors
headers against the architecture, the layout against the model, the checkpoint's files), so bad input
fails in about a second with one line. Outputs are written to ``OUT.partial`` and renamed to ``OUT``
only when every rank and every requested check has succeeded, so ``OUT`` is never half-written.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dcpo_mcore.engine.hf_arch import ArchSpec, padded_vocab_size
from dcpo_mcore.engine.hf_mapping import MappingError, expected_hf_names, mcore_params

from . import spawn
from .ckpt_meta import HF_META_DIR, CheckpointMeta, write_meta
from .errors import ConvertError, VerifyError
from .hf_io import HfWeights, check_weights, copy_meta_files
from .progress import say
from .sources import arch_of, open_checkpoint
from .verify import check_logprobs, compare_hf_dirs, random_input_ids

DEFAULT_MAX_SHARD_BYTES = 2 * 10**9


@dataclass(frozen=True)
class Layout:
    """TP x PP (x VPP chunks per PP rank) to run the conversion at; one rank per TP x PP cell."""

    tp: int = 1
    pp: int = 1
    vpp: int | None = None

    def __str__(self) -> str:
        return f"TP{self.tp} PP{self.pp}" + (f" VPP{self.vpp}" if self.vpp else "")


@dataclass(frozen=True)
class LogprobCheck:
    """--check-logprobs: random sequences from the real vocabulary, compared in float32."""

    tol: float = 1e-4
    num_seqs: int = 4
    seq_len: int = 32
    seed: int = 0


@dataclass(frozen=True)
class RunOptions:
    timeout_s: float | None = None  # whole-job wall clock limit (None: none)
    progress: bool = True  # rank 0 prints per-tensor progress on stdout


def hf_to_mcore(hf_dir: str | Path, out: str | Path, layout: Layout = Layout(), *, verify: bool = False,
                logprobs: LogprobCheck | None = None, run: RunOptions = RunOptions()) -> CheckpointMeta:
    """Write a torch_dist checkpoint of the HF model at ``layout`` (loadable at any other layout)."""
    start = time.monotonic()
    hf_dir, out = Path(hf_dir), Path(out)
    arch = arch_of(hf_dir)
    with HfWeights(hf_dir) as weights:
        dtype = check_weights(weights.infos, arch)
    layout = check_layout(arch, layout)
    meta = CheckpointMeta(
        family=arch.family, params_dtype=str(dtype).removeprefix("torch."), vocab_size=arch.vocab_size,
        padded_vocab_size=padded_vocab_size(arch.vocab_size, layout.tp), tp=layout.tp, pp=layout.pp,
        vpp=layout.vpp, num_hf_tensors=len(expected_hf_names(arch)), megatron_core=_megatron_version(),
        source=str(hf_dir.resolve()))
    coordinator = spawn.is_coordinator()
    partial = _prepare_output(out, coordinator)
    work = out.parent / f"{out.name}.work"
    ids = random_input_ids(arch.vocab_size, _num_seqs(logprobs, layout), logprobs.seq_len,
                           logprobs.seed) if logprobs else None
    steps = [{"op": "import", "hf": str(hf_dir), "ckpt": str(partial)}]
    if verify:
        steps.append({"op": "export", "ckpt": str(partial), "out": str(work / "roundtrip"),
                      "max_shard_bytes": DEFAULT_MAX_SHARD_BYTES})
    if logprobs:
        steps.append({"op": "logprobs", "ckpt": str(partial), "input_ids": ids.tolist(),
                      "out": str(work / "megatron_logprobs.pt")})
    say(f"hf-to-mcore: {arch.family}, {arch.num_layers} layers, {meta.params_dtype}, at {layout} "
        f"({layout.tp * layout.pp} ranks)", run.progress and coordinator)
    try:
        _run_or_discard(partial, steps, hf_dir, layout, dtype, run, coordinator, work)
        if not coordinator:
            return meta
        if verify:
            n = compare_hf_dirs(hf_dir, work / "roundtrip", arch)
            say(f"verify: all {n} tensors byte-identical after HF -> Megatron -> HF", run.progress)
        if logprobs:
            _check_lp(work, hf_dir, ids, logprobs, run)
    except VerifyError as exc:
        raise VerifyError(f"{exc}; the unverified checkpoint is left in {partial}") from None
    finally:
        if coordinator:
            shutil.rmtree(work, ignore_errors=True)
    copy_meta_files(hf_dir, partial / HF_META_DIR)
    write_meta(partial, meta)
    _publish(partial, out)
    say(f"wrote {out} in {time.monotonic() - start:.1f} s", run.progress)
    return meta


def mcore_to_hf(ckpt: str | Path, out: str | Path, layout: Layout | None = None, *,
                max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, hf_config: str | Path | None = None,
                run: RunOptions = RunOptions()) -> Path:
    """Write HF safetensors (+ config and tokenizer) from a checkpoint, loading it at ``layout``.

    ``ckpt``: a ``hf_to_mcore`` output, or a ``dcpo-train`` checkpoint (a step directory, or a run
    directory for its newest valid one; see :mod:`.sources`). ``hf_config`` overrides where the config
    and tokenizer files come from. ``layout`` defaults to the one the checkpoint was written at (known to
    fit the hardware it was made on); TP1 PP1 needs one process that holds the whole model once.
    """
    start = time.monotonic()
    out = Path(out)
    src = open_checkpoint(ckpt, hf_config)
    layout = check_layout(src.arch, layout or Layout(src.tp, src.pp, src.vpp))
    coordinator = spawn.is_coordinator()
    partial = _prepare_output(out, coordinator)
    steps = [{"op": "export", "ckpt": str(src.tensors), "out": str(partial), "max_shard_bytes": max_shard_bytes}]
    say(f"mcore-to-hf: {src.arch.family} {src.kind} checkpoint written at TP{src.tp} PP{src.pp}, loading at "
        f"{layout}", run.progress and coordinator)
    _run_or_discard(partial, steps, src.config_dir, layout, getattr(torch, src.dtype), run, coordinator)
    if coordinator:
        copy_meta_files(src.config_dir, partial)
        _publish(partial, out)
        say(f"wrote {out} in {time.monotonic() - start:.1f} s", run.progress)
    return out


def check_checkpoint_logprobs(ckpt: str | Path, hf_dir: str | Path, layout: Layout | None = None, *,
                              check: LogprobCheck = LogprobCheck(), hf_config: str | Path | None = None,
                              run: RunOptions = RunOptions()) -> float:
    """Compare a checkpoint's Megatron log-probs with an HF model's; returns the max abs diff.
    ``ckpt`` and ``hf_config``: as for :func:`mcore_to_hf`."""
    hf_dir = Path(hf_dir)
    src = open_checkpoint(ckpt, hf_config)
    arch = src.arch
    hf_arch = arch_of(hf_dir)
    if _shape_fields(hf_arch) != _shape_fields(arch):
        raise ConvertError(f"the HF model in {hf_dir} has a different architecture than checkpoint {ckpt}")
    with HfWeights(hf_dir) as weights:
        check_weights(weights.infos, hf_arch)  # transformers would silently random-init a missing one
    layout = check_layout(arch, layout or Layout(src.tp, src.pp, src.vpp))
    coordinator = spawn.is_coordinator()
    ids = random_input_ids(arch.vocab_size, _num_seqs(check, layout), check.seq_len, check.seed)
    work = Path(tempfile.mkdtemp(prefix="dcpo-convert-lp-")) if coordinator else Path("/nonexistent")
    steps = [{"op": "logprobs", "ckpt": str(src.tensors), "input_ids": ids.tolist(),
              "out": str(work / "megatron_logprobs.pt")}]
    try:
        _run(steps, src.config_dir, layout, getattr(torch, src.dtype), run, coordinator)
        return _check_lp(work, hf_dir, ids, check, run) if coordinator else 0.0
    finally:
        if coordinator:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# helpers


def check_layout(arch: ArchSpec, layout: Layout) -> Layout:
    """Normalise (VPP 1 -> None) and refuse a layout the model cannot be split into."""
    if layout.tp < 1 or layout.pp < 1 or (layout.vpp is not None and layout.vpp < 1):
        raise ConvertError(f"--tp, --pp and --vpp must be >= 1, got {layout}")
    vpp = layout.vpp if layout.vpp and layout.vpp > 1 else None
    if vpp and layout.pp < 2:
        raise ConvertError("--vpp needs --pp >= 2 (virtual stages interleave across pipeline ranks)")
    stages = layout.pp * (vpp or 1)
    if arch.num_layers % stages:
        raise ConvertError(f"PP*VPP = {stages} does not divide num_hidden_layers {arch.num_layers}")
    try:
        mcore_params(arch, layout.tp, stages, 0)
    except MappingError as exc:
        raise ConvertError(str(exc).replace("tp_size", "--tp")) from None
    return Layout(layout.tp, layout.pp, vpp)


def _shape_fields(arch: ArchSpec) -> tuple:
    return tuple(v for k, v in vars(arch).items() if k != "torch_dtype")


def _num_seqs(check: LogprobCheck, layout: Layout) -> int:
    # The interleaved schedule runs micro-batches in groups of PP; one sequence is one micro-batch.
    if not layout.vpp:
        return check.num_seqs
    return -(-check.num_seqs // layout.pp) * layout.pp


def _prepare_output(out: Path, coordinator: bool) -> Path:
    partial = out.with_name(out.name + ".partial")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConvertError(f"output {out} already exists and is not empty; remove it or choose another --out")
    if coordinator:
        shutil.rmtree(partial, ignore_errors=True)  # a stale leftover of an earlier failed run
        partial.mkdir(parents=True)
    return partial


def _publish(partial: Path, out: Path) -> None:
    if out.is_dir():
        out.rmdir()  # empty (checked in _prepare_output)
    partial.rename(out)


def _run(steps: list[dict], config_dir: Path, layout: Layout, dtype: torch.dtype, run: RunOptions,
         coordinator: bool, work: Path | None = None) -> None:
    if coordinator and work is not None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    job = {"config": str(config_dir), "tp": layout.tp, "pp": layout.pp, "vpp": layout.vpp,
           "dtype": str(dtype).removeprefix("torch."), "progress": run.progress, "steps": steps}
    spawn.run_job(job, layout.tp * layout.pp, timeout_s=run.timeout_s)


def _run_or_discard(partial: Path, *args) -> None:
    """:func:`_run`; a failed run's partial output is useless (unlike an unverified one) and removed."""
    try:
        _run(*args)
    except BaseException:
        if spawn.is_coordinator():
            shutil.rmtree(partial, ignore_errors=True)
        raise


def _check_lp(work: Path, hf_dir: Path, ids: torch.Tensor, check: LogprobCheck, run: RunOptions) -> float:
    lp = torch.load(work / "megatron_logprobs.pt")
    diff = check_logprobs(lp, hf_dir, ids, check.tol)
    say(f"check-logprobs: max abs diff {diff:.3e} <= tolerance {check.tol:g} "
        f"({ids.shape[0]} x {ids.shape[1]} tokens, float32)", run.progress)
    return diff


def _megatron_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("megatron-core")
    except PackageNotFoundError:
        return "unknown"
