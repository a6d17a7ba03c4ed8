"""What ``mcore-to-hf`` and ``check-logprobs`` can read: a ``dcpo-convert`` checkpoint, or a trainer's.

* A ``dcpo-convert hf-to-mcore`` output carries its HF config and tokenizer in ``hf/`` and its layout in
  ``dcpo_checkpoint.json`` (:mod:`.ckpt_meta`).
* A ``dcpo-train`` checkpoint (``RUN_DIR/checkpoints/step_N``; a run directory or its ``checkpoints/``
  means the newest valid one) holds the policy's weights in ``model/`` beside the optimizer state, and the
  run's resolved config in ``trainer_state.json``. The config names the HF directory the run started from
  (``model.hf_path``) or the converted checkpoint it started from (``model.init_checkpoint``, whose
  ``hf/`` is used); that directory gives the config and tokenizer files. ``--hf-config DIR`` overrides
  the lookup, for instance when the run's relative paths do not resolve from here.

Both are checked before any rank starts: the trainer checkpoint against its manifest (sizes and sha256),
the tensor files against the torch DCP metadata, and the HF config's architecture against the saved
tensors' shapes. This is how an RL result leaves for Hugging Face and SGLang.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dcpo_mcore.engine.hf_arch import ArchError, ArchSpec

from .ckpt_meta import HF_META_DIR, META_NAME, check_dcp_files, check_checkpoint_dir
from .errors import ConvertError

__all__ = ["CheckpointSource", "arch_of", "open_checkpoint"]

TRAINER_MODEL_DIR = "model"  # checkpoint/manager.py's MODEL_DIR


@dataclass(frozen=True)
class CheckpointSource:
    tensors: Path  # the torch_dist directory the ranks load
    config_dir: Path  # HF config.json + tokenizer files
    arch: ArchSpec
    dtype: str  # "float32", "bfloat16", ...
    tp: int  # the layout it was written at
    pp: int
    vpp: int | None
    kind: str  # "dcpo-convert" or "dcpo-train step N"


def open_checkpoint(ckpt: str | Path, hf_config: str | Path | None = None) -> CheckpointSource:
    path = Path(ckpt)
    if (path / META_NAME).is_file():
        return _converted(path, hf_config)
    if not path.exists():
        raise ConvertError(f"checkpoint directory {path} does not exist")
    return _trainer(_trainer_step_dir(path), hf_config)


def arch_of(config_dir: str | Path) -> ArchSpec:
    """The architecture of an HF config directory, or a one-line :class:`ConvertError`."""
    if not Path(config_dir).is_dir():
        raise ConvertError(f"HF checkpoint directory {config_dir} does not exist")
    try:
        return ArchSpec.from_hf_config(config_dir)
    except ArchError as exc:
        raise ConvertError(str(exc)) from None


def _converted(path: Path, hf_config) -> CheckpointSource:
    meta, dcp_meta = check_checkpoint_dir(path)
    config_dir = Path(hf_config) if hf_config else path / HF_META_DIR
    arch = arch_of(config_dir)
    if arch.vocab_size != meta.vocab_size or arch.family != meta.family:
        raise ConvertError(f"checkpoint {path} is inconsistent: {config_dir}/config.json does not match "
                           f"{META_NAME}")
    _check_tensor_shapes(arch, dcp_meta, path, config_dir)
    return CheckpointSource(path, config_dir, arch, meta.params_dtype, meta.tp, meta.pp, meta.vpp, "dcpo-convert")


def _trainer_step_dir(path: Path) -> Path:
    """A step directory as given, or the newest valid one under a run directory / checkpoint root. Either
    way it has passed the trainer's own checkpoint validation (``CheckpointManager.problem``: manifest
    sizes and sha256, trainer state, model and RNG files), exactly once."""
    from dcpo_mcore.checkpoint import CheckpointManager

    if (path / "manifest.json").is_file():
        problem = CheckpointManager(path.parent, keep_last=1).problem(path)
        if problem is not None:
            raise ConvertError(f"trainer checkpoint {path} is not usable: {problem}")
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    manager = CheckpointManager(root, keep_last=1)
    if not manager.step_dirs():
        raise ConvertError(f"{path} is neither a dcpo-convert checkpoint (no {META_NAME}) nor a dcpo-train "
                           "checkpoint, run directory or checkpoint root (no manifest.json, no step_* directories)")
    latest = manager.find_latest_valid()
    if latest is None:
        raise ConvertError(f"no complete checkpoint under {root} (every step_* directory failed its validation)")
    return latest


def _trainer(step_dir: Path, hf_config) -> CheckpointSource:
    from dcpo_mcore.checkpoint.files import read_trainer_state

    try:
        state = read_trainer_state(step_dir)
        cfg = json.loads(state["config_json"])
        model, parallel = cfg["model"], cfg["parallel"]
    except Exception as exc:  # noqa: BLE001 - any of: missing file/key, bad JSON, bad pickle
        raise ConvertError(f"trainer checkpoint {step_dir} has no readable run config "
                           f"({type(exc).__name__}: {exc})") from None
    config_dir = Path(hf_config) if hf_config else _run_hf_dir(step_dir, cfg)
    tensors = step_dir / TRAINER_MODEL_DIR
    dcp_meta = check_dcp_files(tensors)
    arch = arch_of(config_dir)
    _check_tensor_shapes(arch, dcp_meta, tensors, config_dir)
    return CheckpointSource(tensors, config_dir, arch, model.get("params_dtype") or "float32",
                            parallel["tensor_model_parallel_size"], parallel["pipeline_model_parallel_size"],
                            parallel.get("virtual_pipeline_model_parallel_size"),
                            f"dcpo-train step {state.get('step')}")


def _run_hf_dir(step_dir: Path, cfg: dict) -> Path:
    """The HF directory the run started from, found from here.

    The run's paths were written relative to the directory it was launched from. A step directory is
    ``<launch dir>/<run_dir>/checkpoints/step_N`` with the default checkpoint root, so that launch
    directory is tried as well as this one.
    """
    bases = [Path.cwd()]
    run_dir = Path(cfg.get("run_dir") or "")
    if not run_dir.is_absolute() and run_dir.parts:
        launch = step_dir.resolve().parent.parent
        for _ in run_dir.parts:
            launch = launch.parent
        bases.append(launch)
    model = cfg["model"]
    candidates = []
    for rel in [model.get("hf_path")] + ([str(Path(model["init_checkpoint"]) / HF_META_DIR)]
                                         if model.get("init_checkpoint") else []):
        if rel:
            candidates += [Path(rel)] if Path(rel).is_absolute() else [b / rel for b in bases]
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    tried = ", ".join(str(c) for c in candidates) or "none (the run config names no model.hf_path)"
    raise ConvertError(f"cannot find the HF config and tokenizer of trainer checkpoint {step_dir} "
                       f"(tried {tried}); pass --hf-config DIR")


def _check_tensor_shapes(arch: ArchSpec, dcp_meta, tensors: Path, config_dir: Path) -> None:
    """The saved tensors' global shapes (``dcp_meta``: the torch DCP metadata of ``tensors``) against the ones
    ``config_dir`` implies, before any rank starts (a wrong --hf-config would otherwise fail inside a rank,
    after megatron is built)."""
    saved = dcp_meta.state_dict_metadata
    layers, hidden, ffn = arch.num_layers, arch.hidden_size, arch.ffn_hidden_size
    qkv_rows = (arch.num_attention_heads + 2 * arch.num_query_groups) * arch.head_dim
    expected = {"decoder.layers.self_attention.linear_qkv.weight": (layers, qkv_rows, hidden),
                "decoder.layers.mlp.linear_fc1.weight": (layers, 2 * ffn, hidden),
                "decoder.layers.mlp.linear_fc2.weight": (layers, hidden, ffn)}
    wrong = [f"{k.removeprefix('decoder.layers.')} {tuple(saved[k].size)} vs {v}" for k, v in expected.items()
             if k in saved and tuple(getattr(saved[k], "size", ())) != v]
    emb = saved.get("embedding.word_embeddings.weight")
    if emb is not None and (emb.size[1] != hidden or emb.size[0] < arch.vocab_size):
        wrong.append(f"embedding {tuple(emb.size)} vs (>= {arch.vocab_size}, {hidden})")
    if wrong:
        raise ConvertError(f"{config_dir}/config.json does not describe the model in {tensors} "
                           f"({'; '.join(wrong)}); pass the right --hf-config DIR")
