"""Save / load model + optimizer with megatron ``dist_checkpointing``, resharding across layouts.

The optimizer is always saved in the ``fully_reshardable`` format, so a checkpoint written at one
TP x PP x DP (x VPP) layout loads at any other with the same optimizer kind (distributed or not; the
two kinds store different formats, so switching kind is refused with a clear error).

Two upstream bugs of megatron-core 0.16.1 (still in 0.19.2: the tests below fail without the guards on both stacks) hit the distributed optimizer with the torch
AdamW fallback (no TE / apex) and are guarded here (docs/platform.md [dist-optimizer-checkpoint]):

1. ``KeyError: 'step'`` on load. (a) ``DistributedOptimizer.state_dict()`` asserts that exactly one
   ``step`` exists, so a fresh optimizer (empty Adam state) cannot even build its loading state dict.
   Guard: :func:`_materialize_adam_state` runs one zero-learning-rate step on zero grads first (AdamW
   with lr 0 changes no weight; the step count is overwritten by the load). (b) The fully-reshardable
   loader copies every key of the live per-param state (``step`` included) from the loaded tensors,
   which never contain ``step``. Guard: :func:`_tolerate_missing_step` feeds the live ``step`` back in.
2. ``DistributedOptimizer.load_state_dict`` puts ONE ``step`` tensor object into every parameter's
   state; torch's AdamW increments it in place once per parameter, so after resuming the bias
   corrections use a step count N times too large and the run silently diverges.
   Guard: :func:`_unshare_step_tensors` gives every parameter its own copy.

``tests/dist/test_engine_checkpoint.py`` shows that each guard is needed and that resuming at another
layout reproduces the uninterrupted run's next steps.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

from .forked_children import die_with_this_thread
from dcpo_mcore.errors import UserValueError

SHARDING = {"distrib_optim_sharding_type": "fully_reshardable"}


def _model_keys(chunks) -> list[str]:
    # VPP chunks get their own top-level keys; the tensors inside carry global (layout-free) keys, so a
    # checkpoint loads whatever the VPP size.
    return ["model"] if len(chunks) == 1 else [f"model{i}" for i in range(len(chunks))]


def _model_sharded_state_dict(chunks) -> dict:
    return {key: c.module.sharded_state_dict() for key, c in zip(_model_keys(chunks), chunks)}


def _sharded_state_dict(chunks, optimizer, is_loading: bool) -> dict:
    model_sd = _model_sharded_state_dict(chunks)
    state = dict(model_sd)
    state["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=SHARDING)
    return state


def _is_distributed(optimizer) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return any(isinstance(opt, DistributedOptimizer) for opt in _sub_optimizers(optimizer))


def save(directory: str | Path, chunks, optimizer, extra: dict) -> None:
    """Write a checkpoint directory (created empty by rank 0); ``extra`` is plain common state."""
    path = Path(directory)
    busy = torch.zeros(1)
    if dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
        busy[0] = float(any(path.iterdir()))
    _all_reduce_max(busy)  # every rank raises (or none does): a lone raise would hang the others
    if busy.item():
        raise FileExistsError(f"checkpoint directory {path} is not empty; save into a new directory")
    _materialize_adam_state(chunks, optimizer)  # saving before the first step needs the state too
    state = _sharded_state_dict(chunks, optimizer, is_loading=False)
    state["engine"] = dict(extra)
    meta = {**SHARDING, "distributed_optimizer": _is_distributed(optimizer)}
    synchronous_save(state, path, content_metadata=meta)
    dist.barrier()


def synchronous_save(sharded_state: dict, directory: str | Path, **save_kwargs) -> None:
    """``dist_checkpointing.save`` with no helper process left behind if this process is killed mid-save:
    an in-process results queue instead of megatron's Manager server, and its forked file writers die
    with the saving thread (forked_children.py says why each matters)."""
    _in_process_results_queue()
    with die_with_this_thread():
        dist_checkpointing.save(sharded_state, str(directory), **save_kwargs)


def _in_process_results_queue() -> None:
    """Give megatron's checkpoint writer an in-process results queue.

    Its default is ``multiprocessing.get_context("spawn").Manager().Queue()``: a Manager *server
    process* that a SIGKILLed trainer leaves behind as an orphan (holding the job's stdout, so a
    launcher waiting on it hangs). Our saves are synchronous: the forked writers report through their
    own local queue and only this process touches the results queue, so a thread-safe queue.Queue
    does the same job without a process.
    """
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if getattr(filesystem_async, "_results_queue", "missing") is None:
        filesystem_async._results_queue = queue.Queue()


def load(directory: str | Path, chunks, optimizer) -> dict:
    """Load model and optimizer state in place (any layout); returns the saved ``extra`` state."""
    path = Path(directory)
    if not (path / "metadata.json").exists():
        raise FileNotFoundError(f"{path} is not a dist_checkpointing directory (no metadata.json)")
    saved_kind = (dist_checkpointing.load_content_metadata(str(path)) or {}).get("distributed_optimizer")
    if saved_kind is not None and saved_kind != _is_distributed(optimizer):
        raise UserValueError(f"checkpoint {path} was saved with use_distributed_optimizer={saved_kind}; "
                         f"load it with the same setting (the two optimizer formats differ)")
    _materialize_adam_state(chunks, optimizer)
    state = _sharded_state_dict(chunks, optimizer, is_loading=True)
    state["engine"] = {}
    loaded, _, absent = load_across_layer_specs(state, path)
    if absent:
        raise UserValueError(f"{path} lacks {len(absent)} entr(ies) this engine saves, e.g. {sorted(absent)[:3]}; "
                             "is it a checkpoint of this architecture and optimizer?")
    for key, chunk in zip(_model_keys(chunks), chunks):
        load_module_state(chunk.module, loaded[key])
    with _tolerate_missing_step(optimizer):
        optimizer.load_state_dict(loaded["optimizer"])
    _unshare_step_tensors(optimizer)
    return dict(loaded.get("engine", {}))


def resolve_checkpoint_dir(directory: str | Path) -> Path:
    """A dist_checkpointing directory, given it or a Megatron-LM save root (``latest_checkpointed_iteration.txt``
    naming an ``iter_*`` directory) or one of our ``step_*`` checkpoints (weights in ``model/``)."""
    path = Path(directory)
    tracker = path / "latest_checkpointed_iteration.txt"
    if tracker.exists():
        text = tracker.read_text().strip()
        path = path / (f"iter_{int(text):07d}" if text.isdigit() else text)
    elif (path / "model" / "metadata.json").exists():
        path = path / "model"
    if not (path / "metadata.json").exists():
        raise FileNotFoundError(f"{directory} is not a megatron torch_dist checkpoint (no metadata.json in {path}); "
                                "give the directory megatron-core's dist_checkpointing.save wrote")
    return path


def load_weights_only(directory: str | Path, chunks) -> Path:
    """Load only the model weights of a torch_dist checkpoint (pretraining / SFT -> the RL start), any layout.

    Missing tensors, extra model tensors and shape mismatches raise one-line errors; the checkpoint's
    optimizer state and other entries are ignored (RL starts with a fresh optimizer).
    """
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from torch.distributed.checkpoint.api import CheckpointException

    path = resolve_checkpoint_dir(directory)
    state = _model_sharded_state_dict(chunks)
    try:
        # megatron's names, from the checkpoint's side: "missing" = in the checkpoint but not asked for,
        # "unexpected" = asked for but not in the checkpoint
        loaded, in_ckpt_only, absent = load_across_layer_specs(state, path)
    except (CheckpointingException, CheckpointException) as exc:  # e.g. a shape that does not match this model
        raise UserValueError(f"{path} does not fit this model: {_cause_line(exc)}") from None
    if absent:
        raise UserValueError(f"{path} lacks {len(absent)} tensor(s) of this model, e.g. {sorted(absent)[:3]}; is it a "
                         "checkpoint of this architecture (layers, GQA groups, tied embeddings)?")
    extra = sorted(k for k in in_ckpt_only if not k.startswith(("optimizer", "rng_state", "rerun_state")))
    extra = [k for k in extra if "." in k]  # model tensors have dotted names; top-level scalars do not
    if extra:
        raise UserValueError(f"{path} has {len(extra)} model tensor(s) this model does not, e.g. {extra[:3]}; is it a "
                         "checkpoint of a bigger or different architecture?")
    for key, chunk in zip(_model_keys(chunks), chunks):
        load_module_state(chunk.module, loaded[key])
    return path


def load_across_layer_specs(sharded_state: dict, path: str | Path) -> tuple[dict, set[str], set[str]]:
    """``dist_checkpointing.load`` that lets a checkpoint of one layer spec load into the other
    (docs/gpu.md [ckpt-keys]). The weights already meet under the same names (the local spec's
    ``sharded_state_dict_keys_map`` stores its norms under the TE spec's fused names); what differs is
    ``*_extra_state``: Transformer Engine modules (FP8 scaling state, the norms whenever TE imports) save
    one, megatron's local modules do not. Those entries are loaded where both sides have them and skipped
    otherwise; :func:`load_module_state` then keeps the module's own value for the skipped ones.

    Returns ``(loaded, in_checkpoint_only, absent)``, the last two without ``_extra_state`` keys, for the
    caller to judge: absent = this model asks for it and the checkpoint lacks it."""
    from megatron.core.dist_checkpointing.validation import StrictHandling

    loaded, in_ckpt_only, absent = dist_checkpointing.load(sharded_state, str(path), strict=StrictHandling.RETURN_ALL)
    return loaded, {k for k in in_ckpt_only if not _is_extra_state(k)}, {k for k in absent if not _is_extra_state(k)}


def load_module_state(module: torch.nn.Module, loaded: dict) -> None:
    """``load_state_dict(strict=True)``, with the module's own value for every ``_extra_state`` the
    checkpoint did not have (see :func:`load_across_layer_specs`); any other gap still fails."""
    own = {k: v for k, v in module.state_dict().items() if _is_extra_state(k) and k not in loaded}
    module.load_state_dict({**own, **loaded}, strict=True)


def _is_extra_state(key: str) -> bool:
    return key.rsplit("/", 1)[0].endswith("_extra_state")


def _cause_line(exc: BaseException) -> str:
    """The informative line of a (possibly per-rank wrapped) checkpoint error, e.g. the shape mismatch."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "mismatch" in ln or "CheckpointingException:" in ln:
            return ln.split("CheckpointingException:")[-1].strip()[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _all_reduce_max(t: torch.Tensor) -> None:
    if dist.get_backend() == "nccl":
        dev = t.cuda()
        dist.all_reduce(dev, op=dist.ReduceOp.MAX)
        t.copy_(dev.cpu())
    else:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)


def _sub_optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


@torch.no_grad()
def _materialize_adam_state(chunks, optimizer) -> None:
    """Guard 1: one lr-0 step on zero grads so every Adam state tensor exists before loading."""
    if _has_state(optimizer):
        return
    for c in chunks:
        c.zero_grad_buffer()
    optimizer.zero_grad()
    saved = [(g, g["lr"]) for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = 0.0
    try:
        optimizer.prepare_grads()
        optimizer.step_with_ready_grads()
    finally:
        for g, lr in saved:
            g["lr"] = lr
    optimizer.zero_grad()


@contextlib.contextmanager
def _tolerate_missing_step(optimizer):
    """Guard 1b: let the fully-reshardable loader keep the live ``step`` it finds no tensor for."""
    patched = []
    for opt in _sub_optimizers(optimizer):
        original = getattr(opt, "_set_main_param_and_optimizer_states", None)
        if original is None:
            continue

        def set_states(model_param, tensors, _opt=opt, _original=original):
            if "step" not in tensors:
                group_index, group_order = _opt.model_param_group_index_map[model_param]
                main_param = _opt.optimizer.param_groups[group_index]["params"][group_order]
                step = _opt.optimizer.state.get(main_param, {}).get("step")
                if isinstance(step, torch.Tensor):
                    tensors = {**tensors, "step": step}  # copy_ onto itself: a no-op
            return _original(model_param, tensors)

        opt._set_main_param_and_optimizer_states = set_states  # instance attribute, removed below
        patched.append(opt)
    try:
        yield
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states


def _has_state(optimizer) -> bool:
    return all(len(opt.optimizer.state) > 0 for opt in _sub_optimizers(optimizer)
               if getattr(opt, "optimizer", None) is not None and opt.optimizer.param_groups)


def _unshare_step_tensors(optimizer) -> None:
    """Guard 2: every parameter's ``state['step']`` must be its own tensor (torch increments in place)."""
    for opt in _sub_optimizers(optimizer):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        for st in inner.state.values():
            if isinstance(st.get("step"), torch.Tensor):
                st["step"] = st["step"].clone()
