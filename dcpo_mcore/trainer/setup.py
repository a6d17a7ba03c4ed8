"""Build everything the loop needs from the validated config, once, and tear it down in reverse order.

Strategies are chosen here, not with ``if`` inside the step (docs/architecture.md [conv-build-once]).

Rank 0 owns the processes and connections (SGLang servers, rollout client, grader pool, metric
sinks, evaluation); every rank owns the engine, the weight-sync endpoint, the SAS store, the cursor
and the checkpoint manager. The SGLang servers boot in a background thread while the engine is built,
because each costs ~25 s of start-up that would otherwise be paid in series.
"""
from __future__ import annotations

import contextlib
import os
import logging
import signal
import threading
from pathlib import Path
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch

from dcpo_mcore.algo import PromptStatsStore
from dcpo_mcore.algo_setup import build_algorithm
from dcpo_mcore.config import TrainConfig
from dcpo_mcore.metrics.phases import PhaseMeter
from dcpo_mcore.world_env import single_process_env_defaults

from dcpo_mcore.engine import collectives as comm
from .producers import build_producer
from .rollout_stage import RolloutSettings, RolloutStage, batches_from_bytes, batches_to_bytes
from .update_stage import UpdateSettings
from dcpo_mcore.errors import UserValueError
from dcpo_mcore.termination import raise_if_terminated

log = logging.getLogger(__name__)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# While rank 0 rolls out or evaluates (tens of minutes at production scale: 512 x 16 samples of up to 3072
# tokens), the other ranks wait in a broadcast; the default 10-minute collective timeout would kill them.
COLLECTIVE_TIMEOUT_S = 4 * 3600
ROLLOUT_BUFFER_FILE = "rollout_buffer.json"  # rank 0's rollouts generated ahead of training (max_staleness >= 1)


@dataclass
class Trainer:
    """The parts of one run; see :func:`build_trainer`."""

    cfg: TrainConfig
    engine: Any
    sync: Any
    rollout: RolloutStage
    update: UpdateSettings
    store: PromptStatsStore
    cursor: Any
    ckpt: Any
    start_step: int = 0
    sinks: Any = None  # rank 0
    evaluate: Callable[[int], dict] | None = None  # rank 0; step -> eval metrics
    ref_engine: Any = None  # frozen initial policy, only for a loss with a KL term
    resumed_from: str | None = None
    meter: PhaseMeter = field(default_factory=PhaseMeter)  # seconds and peak RSS of each phase of a step
    _preempt_flag: list = field(default_factory=lambda: [False])
    _close: list = field(default_factory=list)  # callbacks, run in reverse order

    # ------------------------------------------------------------------ schedule
    def eval_due(self, step: int) -> bool:
        """The same answer on every rank (run_eval is collective): only rank 0 has ``evaluate``, so this
        must not look at it. Step 0 is the evaluation before the first step."""
        every = self.cfg.eval_interval
        return bool(every and self.cfg.data.eval_files) and (step % every == 0 or step == self.cfg.steps)

    def save_due(self, step: int) -> bool:
        every = self.cfg.checkpoint.save_interval
        return step == self.cfg.steps or bool(every and step % every == 0)

    def preempted(self) -> bool:
        """True on every rank once any rank got SIGUSR1 (Slurm's warning before the time limit). A SIGTERM
        whose exit a finalizer swallowed is raised again here, once per step (dcpo_mcore/termination.py)."""
        raise_if_terminated()
        return comm.any_rank(self._preempt_flag[0])

    # ------------------------------------------------------------------ actions
    def run_eval(self, step: int) -> dict:
        metrics = self.evaluate(step) if (self.evaluate is not None and comm.is_rank0()) else {}
        return comm.broadcast_object(metrics)

    @property
    def producer(self):
        """Where the batches come from (trainer/producers.py): on-policy or generated ahead."""
        return self.rollout.producer

    def save(self, step: int) -> None:
        state = {"step": step, "weight_version": self.sync.version, "sas_store": self.store.state_dict(),
                 "cursor": self.cursor.state_dict(), "config_json": self.cfg.model_dump_json()}
        ahead = self.producer.buffered()  # rank 0's batches for steps after this one, already generated
        files = {ROLLOUT_BUFFER_FILE: batches_to_bytes(ahead)} if ahead else None
        self.ckpt.save(step, self.engine.save_checkpoint, state, rank0_files=files)

    def log(self, step: int, metrics: dict) -> None:
        if self.sinks is not None:
            self.sinks.log(step, metrics)

    def close(self) -> None:
        while self._close:
            fn = self._close.pop()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep tearing down the rest
                log.warning("teardown step failed: %s", exc)

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def engine_layout(par) -> "ParallelLayout":
    """The engine's layout from the ``parallel`` config section: every model-parallel setting the engine
    takes (a setting dropped here would be accepted and then ignored, as ``recompute`` once was)."""
    from dcpo_mcore.engine.layout import ParallelLayout

    return ParallelLayout(tp=par.tensor_model_parallel_size, pp=par.pipeline_model_parallel_size,
                          vpp=par.virtual_pipeline_model_parallel_size, sequence_parallel=par.sequence_parallel,
                          use_distributed_optimizer=par.use_distributed_optimizer, recompute=par.recompute)


def build_trainer(cfg: TrainConfig) -> Trainer:
    """Everything for ``cfg``; resumes from the latest valid checkpoint when ``checkpoint.resume`` says so."""
    from dcpo_mcore.checkpoint import CheckpointManager
    from dcpo_mcore.engine.batching import BatchSettings
    from dcpo_mcore.engine.layout import ParallelLayout, Precision
    from dcpo_mcore.engine.optimizer import OptimSettings
    from dcpo_mcore.engine.policy import EngineSettings, PolicyEngine
    from dcpo_mcore.rollout import SamplingParams
    from dcpo_mcore.sync import WeightSync, settings_from_config

    from dcpo_mcore.engine.parallel import init_distributed

    single_process_env_defaults()
    init_distributed(timeout_s=COLLECTIVE_TIMEOUT_S)  # before the engine, which would use the default
    closers: list = []
    try:
        hf_path = _require_hf_path(cfg)
        servers_box = _start_servers_in_background(cfg, hf_path, closers)  # rank 0; joins below
        tokenizer = _load_tokenizer(hf_path)
        train_set = _load_prompts(cfg, cfg.data.train_files, tokenizer)
        parts = build_algorithm(cfg.algo)
        par = cfg.parallel
        settings = EngineSettings(
            layout=engine_layout(par),
            precision=Precision(params_dtype=_DTYPES[cfg.model.params_dtype], fp8=cfg.model.fp8,
                                fp8_recipe=cfg.model.fp8_recipe),
            optim=OptimSettings.from_config(cfg.optim, total_steps=cfg.steps * _updates_per_step(cfg)),
            batching=BatchSettings(micro_batch_size=par.micro_batch_size),
            temperature=cfg.rollout.temperature, seed=cfg.seed,
            dropout=max(cfg.model.attention_dropout, cfg.model.hidden_dropout))
        engine = PolicyEngine.from_hf(hf_path, settings, parts.loss)
        ref_engine = None
        if parts.loss.kl_coef > 0:  # the KL anchor is the initial policy, whatever a resume loads into `engine`
            ref_engine = PolicyEngine.from_hf(hf_path, replace(settings, trainable=False))
            if cfg.model.init_checkpoint:
                from dcpo_mcore.engine.policy import load_initial_weights

                load_initial_weights(ref_engine, cfg.model.init_checkpoint)
        cursor = _make_cursor(cfg, len(train_set))
        store = PromptStatsStore()
        ckpt = CheckpointManager(cfg.checkpoint.dir, cfg.checkpoint.keep_last)
        start_step, resumed = _resume(cfg, ckpt, engine, store, cursor)
        ahead = _rollouts_ahead(cfg, resumed)
        # Generating ahead draws prompts before the trainer reaches them: that cursor is its own, and the
        # trainer's (checkpointed) one follows each batch it trains on.
        gen_cursor = cursor if cfg.rollout.max_staleness == 0 else _make_cursor(cfg, len(train_set))
        gen_cursor.load_state_dict(ahead[max(ahead)].cursor_state if ahead else cursor.state_dict())

        servers = servers_box.join() if comm.is_rank0() else None
        pause = None if cfg.rollout.push_mode == "wait" else cfg.rollout.push_mode
        sync = WeightSync(engine, servers, replace(settings_from_config(cfg.sync), pause_mode=pause))
        closers.append(sync.close)
        client = pool = None
        if comm.is_rank0():
            client, pool = _rank0_clients(cfg, servers, closers)
        rollout = RolloutStage(
            RolloutSettings(prompts_per_step=cfg.rollout.prompts_per_step,
                            group_size=cfg.rollout.n_samples_per_prompt,
                            sampling=SamplingParams.from_config(cfg.rollout),
                            max_new_tokens=cfg.rollout.max_new_tokens,
                            **cfg.algo.rollout_shaping()),
            sync, client=client, pool=pool, tokenizer=tokenizer,
            next_prompts=lambda: [train_set[i] for i in gen_cursor.next_batch()], cursor_state=gen_cursor.state_dict)
        update = UpdateSettings(parts.spec.estimator, parts.estimator_params, cfg.algo.mini_batch_prompts,
                                cfg.algo.ppo_epochs, cfg.rollout.mismatch_bound, cfg.algo.tis_cap)
        meter = PhaseMeter(Path(cfg.run_dir) / "memory" / f"rank_{comm.rank():05d}.jsonl")
        trainer = Trainer(cfg, engine, sync, rollout, update, store, cursor, ckpt, start_step=start_step,
                          resumed_from=resumed, ref_engine=ref_engine, meter=meter, _close=closers)
        # The servers booted with the checkpoint's weights, not necessarily ours (resume, init_checkpoint),
        # so the first push happens before any rollout; it also verifies log-prob parity.
        first = sync.push(str(start_step))
        rollout.producer = build_producer(
            rollout._generate_all if comm.is_rank0() else None, max_staleness=cfg.rollout.max_staleness,
            push_mode=cfg.rollout.push_mode, first=start_step, last_step=cfg.steps, preloaded=ahead,
            abort=client.abort if client is not None else None)
        closers.append(rollout.producer.close)  # before the servers and the client go (closers run in reverse)
        if comm.is_rank0():
            trainer.sinks = _sinks(cfg, start_step, resumed, closers)
            trainer.evaluate = _evaluator(cfg, client, pool, tokenizer)
            log.info("weights pushed to SGLang as version %s in %.2f s (max log-prob diff %s)", start_step,
                     first["sync/seconds"], first.get("sync/logprob_max_abs_diff"))
        _install_preemption_handler(trainer._preempt_flag)
        return trainer
    except BaseException:
        for fn in reversed(closers):
            with contextlib.suppress(Exception):
                fn()
        raise


def _updates_per_step(cfg: TrainConfig) -> int:
    return cfg.algo.ppo_epochs * max(1, cfg.rollout.prompts_per_step // cfg.algo.mini_batch_prompts)


def _require_hf_path(cfg: TrainConfig) -> str:
    if not cfg.model.hf_path:
        raise UserValueError("model.hf_path is required: the Hugging Face directory with config.json and the "
                         "tokenizer (the CPU demo writes its own: see `dcpo-demo`)")
    return cfg.model.hf_path


def _load_tokenizer(hf_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_path)


def _load_prompts(cfg: TrainConfig, files: list[str], tokenizer):
    from dcpo_mcore.data import load_prompt_dataset

    if not files:
        raise UserValueError("data.train_files is empty: give at least one .parquet or .jsonl prompt file")
    return load_prompt_dataset(files, tokenizer, prompt_key=cfg.data.prompt_key, on_bad_row=cfg.data.on_bad_row,
                               chat_template=cfg.data.chat_template, max_prompt_tokens=cfg.rollout.max_prompt_tokens)


def _make_cursor(cfg: TrainConfig, num_items: int):
    from dcpo_mcore.data import PromptCursor

    return PromptCursor(num_items, cfg.rollout.prompts_per_step, shuffle=cfg.data.shuffle, seed=cfg.seed)


def _resume(cfg: TrainConfig, ckpt, engine, store, cursor) -> tuple[int, str | None]:
    path = ckpt.resolve_resume(cfg.checkpoint.resume)
    if path is None:
        if cfg.model.init_checkpoint:  # pretrain / SFT -> RL: megatron weights straight in, no HF round trip
            from dcpo_mcore.engine.policy import load_initial_weights

            loaded = load_initial_weights(engine, cfg.model.init_checkpoint)
            if comm.is_rank0():
                log.info("initial policy weights loaded from %s (model.init_checkpoint)", loaded)
        return 0, None
    state = ckpt.load(path, engine.load_checkpoint)
    store.load_state_dict(state["sas_store"])
    cursor.load_state_dict(state["cursor"])
    if comm.is_rank0():
        log.info("resuming at step %d from %s", state["step"], path)
    return int(state["step"]), str(path)


def _rollouts_ahead(cfg: TrainConfig, resumed: str | None) -> dict:
    """Rank 0: the batches the checkpoint holds for the steps after it (generated ahead of training)."""
    if not (resumed and comm.is_rank0()):
        return {}
    from dcpo_mcore.checkpoint import CheckpointManager

    data = CheckpointManager.read_rank0_file(resumed, ROLLOUT_BUFFER_FILE)
    if data is None:
        return {}
    if cfg.rollout.max_staleness == 0:  # its batches were made with older weights than an on-policy step takes
        log.info("the checkpoint holds rollouts generated ahead, but rollout.max_staleness=0: they are not used")
        return {}
    batches = {s: b for s, b in batches_from_bytes(data).items() if s <= cfg.steps}
    log.info("%d rollout batch(es) generated ahead restored from the checkpoint (steps %s)", len(batches),
             sorted(batches))
    return batches


class _Background:
    """A value produced by a thread (the servers' start-up); ``join`` re-raises its error here."""

    def __init__(self, fn: Callable[[], Any] | None):
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True, name="sglang-startup") if fn else None
        if self._thread:
            self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._value = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to join()
            self._error = exc

    def join(self) -> Any:
        if self._thread:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _trainer_gpus_on_this_node() -> int:
    """GPUs this node's trainer ranks hold (cuda:0 .. LOCAL_WORLD_SIZE-1, engine/parallel.py); servers the
    trainer launches itself start after them (docs/gpu.md [nccl-sync])."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if torch.cuda.is_available() else 0


def _start_servers_in_background(cfg: TrainConfig, hf_path: str, closers: list) -> _Background:
    if not comm.is_rank0():
        return _Background(None)
    from dcpo_mcore.rollout import ServerManager

    manager = ServerManager.from_config(cfg.rollout, hf_path, cfg.run_dir, random_seed=cfg.seed,
                                        base_gpu_id=_trainer_gpus_on_this_node())
    closers.append(manager.shutdown)
    return _Background(manager.start)


def _rank0_clients(cfg: TrainConfig, servers, closers: list):
    from dcpo_mcore.reward import RewardPool
    from dcpo_mcore.rollout import ClientOptions, RolloutClient

    pool = RewardPool(cfg.reward.verifier, scheme=cfg.reward.scheme, num_workers=cfg.reward.num_workers,
                      timeout_s=cfg.reward.timeout_s)
    closers.append(pool.close)
    client = RolloutClient(servers, ClientOptions.from_config(cfg.rollout), seed=cfg.seed)
    return client, pool


def _sinks(cfg: TrainConfig, start_step: int, resumed: str | None, closers: list):
    from dcpo_mcore.metrics import build_sinks, set_aside_previous_record

    lc = cfg.logging
    if not resumed and (old := set_aside_previous_record(cfg.run_dir)) is not None:
        print(f"[dcpo-train] fresh start in a used run_dir: the earlier metrics.jsonl is kept as {old}", flush=True)
    sinks = build_sinks(cfg.run_dir, tensorboard=lc.tensorboard, wandb=lc.wandb, wandb_project=lc.wandb_project,
                        console=lc.console, console_every=lc.log_interval, total_steps=cfg.steps,
                        start_step=start_step,
                        resume_from_step=start_step if resumed else None)
    closers.append(sinks.close)
    return sinks


def _evaluator(cfg: TrainConfig, client, pool, tokenizer) -> Callable[[int], dict] | None:
    """Periodic held-out evaluation on ``data.eval_files``: greedy Avg@1, and sampled Avg@k when
    ``eval_k`` > 0; None when there are no eval files."""
    if not cfg.data.eval_files or not cfg.eval_interval:
        return None
    from dcpo_mcore.eval import EvalSettings, evaluate
    from dcpo_mcore.eval.evaluate import metric_label

    datasets = [_load_prompts(cfg, [f], tokenizer) for f in cfg.data.eval_files]
    draws = [EvalSettings(k=1, greedy=True, max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.seed)]
    if cfg.eval_k:
        draws.append(EvalSettings(k=cfg.eval_k, greedy=False, max_new_tokens=cfg.rollout.max_new_tokens,
                                  seed=cfg.seed))

    def run(step: int) -> dict:
        out: dict = {}
        for data in datasets:  # eval/<data_source>/avg@1 (greedy), eval/<data_source>/avg@<k> (sampled)
            for settings in draws:
                metrics = evaluate(client, data, pool, settings, tokenizer=tokenizer, step=step).metrics
                if not settings.greedy:  # only its accuracy: the greedy draw's other metrics stay
                    label = metric_label(False, [settings.k])
                    metrics = {key: v for key, v in metrics.items() if key.endswith("/" + label)}
                out.update(metrics)
        return out

    return run


def _install_preemption_handler(flag: list) -> None:
    """SIGUSR1 (``#SBATCH --signal=USR1@120``): finish the step, checkpoint, exit 0 for the requeue."""
    if threading.current_thread() is not threading.main_thread():
        return

    def on_signal(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        flag[0] = True
        log.warning("SIGUSR1: will checkpoint after this step and exit (preemption / time limit)")

    signal.signal(signal.SIGUSR1, on_signal)
