"""THE loop: rollout -> reward -> advantages -> train -> sync -> checkpoint -> log (docs/architecture.md [data-flow]).

Every trainer rank runs this function; rank 0 talks to SGLang and the graders, and the stages
(rollout_stage.py, update_stage.py) share their results. What each call does:

    t.rollout.collect(step)   1-3  prompts from the cursor, n samples each from SGLang (sampler log-probs
                                   and weight_version kept; stale groups re-pushed and regenerated; DAPO
                                   over-generation), graded by the reward pool; made now (on-policy) or
                                   taken from the generation running ahead (rollout.max_staleness >= 1,
                                   t.producer: trainer/producers.py)
    update_policy(...)        4-6  advantages (SAS against the per-prompt store for DCPO), old log-probs
                                   from the megatron forward, PPO epochs x mini-batch optimizer steps
    t.sync.push(version)      7    gather shards -> HF names -> buckets -> broadcast into every worker
                                   (ahead, push_mode=wait: first the batches needing the old weights finish)
    t.save(step)              8    atomic whole-state checkpoint (weights, optimizer, SAS, cursor, RNG)
    t.log(step, metrics)      9    metrics.jsonl, TensorBoard, console progress

t.meter times each phase (timing/<phase>_seconds) and writes every rank's peak RSS per phase to
run_dir/memory/rank_<r>.jsonl (dcpo_mcore/metrics/phases.py).
"""
from __future__ import annotations

import time
from pathlib import Path

from dcpo_mcore.config import TrainConfig
from .setup import build_trainer
from .update_stage import update_policy

PREEMPTED_MARKER = "PREEMPTED"


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns a summary. Writes everything under ``cfg.run_dir``."""
    marker = Path(cfg.run_dir) / PREEMPTED_MARKER
    with build_trainer(cfg) as t:
        marker.unlink(missing_ok=True)
        if t.start_step == 0 and t.eval_due(0):
            t.log(0, t.run_eval(0))
        step = t.start_step
        while step < cfg.steps:
            step += 1
            t0 = time.perf_counter()
            with t.meter("rollout"):
                batch = t.rollout.collect(step)
            t.cursor.load_state_dict(batch.cursor_state)  # rank 0's cursor, on every rank
            t1 = time.perf_counter()
            metrics = update_policy(t.engine, batch, t.store, t.update, t.ref_engine, phase=t.meter)
            t2 = time.perf_counter()
            push_wait = t.producer.before_push(step)
            with t.meter("sync"):
                metrics.update(t.sync.push(str(step)))
            t.producer.after_push(step)
            if t.eval_due(step):
                with t.meter("eval"):
                    metrics.update(t.run_eval(step))
            preempted = t.preempted()
            if t.save_due(step) or preempted:
                with t.meter("save"):
                    t.save(step)
            elapsed = time.perf_counter() - t0
            timing = {"timing/save_seconds": 0.0, **t.meter.end_step(step), "timing/update_seconds": t2 - t1,
                      "timing/step_seconds": elapsed}
            metrics.update({**timing, **t.producer.step_timing(timing, push_wait),
                            "perf/tokens_per_second": metrics["perf/trained_tokens"] / elapsed,
                            "data/epoch": float(t.cursor.state_dict().get("epoch", 0))})
            t.log(step, metrics)
            if preempted:
                marker.write_text(f"{step}\n")
                break
        return {"start_step": t.start_step, "last_step": step, "resumed_from": t.resumed_from,
                "preempted": step < cfg.steps, "prompts_in_sas_store": len(t.store)}
