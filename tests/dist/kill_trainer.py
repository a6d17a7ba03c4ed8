"""Run ``dcpo-train`` with test hooks: record or replay rollouts, and SIGKILL it at a chosen point.

    python tests/dist/kill_trainer.py [--record DIR | --replay DIR] [--kill POINT STEP] -- --config X.yaml k=v ...

Why record/replay: SGLang 0.5.23 on CPU ignores per-request sampling seeds (it builds the seed tensor
only with --enable-deterministic-inference, which the CPU attention backend refuses), so two runs
never sample the same tokens. Recording the reference run's rollout batches and replaying them in the
interrupted + resumed run makes everything downstream of the sampler comparable bit for bit: prompt
order (the replay checks the cursor picks the recorded prompts), rewards, SAS state, old log-probs,
every optimizer step, the weights pushed into the real server, and the checkpoints.

Kill POINTs: rollout (after the cursor advanced for step STEP, before its batch is complete), update
(inside the first optimizer step of step STEP), sync (inside the weight push after step STEP), save
(inside checkpoint STEP, every file written, before the rename that publishes it), writers (checkpoint
STEP's megatron file writer SIGKILLs the trainer mid-write, then dawdles: megatron-core 0.16 forks
writer processes, whose leftovers must die with the trainer; 0.19 writes from threads of the trainer,
which the kill ends at once). The production code
is unchanged: hooks are monkeypatches in this process, and the kill is a real SIGKILL.

``--kill-server POINT STEP`` SIGKILLs the SGLang server the trainer launched instead (its manager
restarts it): rollout (as the batch of step STEP starts generating; with rollout.max_staleness >= 1 that
is while an earlier step trains) or sync (inside the weight push after step STEP, mid-broadcast).
"""
from __future__ import annotations

import argparse
import os
import pickle
import signal
import sys
from pathlib import Path


def _die(where: str) -> None:
    print(f"[kill_trainer] SIGKILL at {where}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def install_record_replay(record: str | None, replay: str | None, kill: tuple[str, int] | None) -> None:
    from dcpo_mcore.trainer.rollout_stage import RolloutStage

    orig_all = RolloutStage._generate_all

    def generate_all(self, step):
        if replay is None:
            batch = orig_all(self, step)
        else:
            with open(Path(replay) / f"step_{step}.pkl", "rb") as f:
                batch = pickle.load(f)
            records = self.next_prompts()  # advance the cursor exactly as a real rollout would
            assert [r.key for r in records] == batch.keys[::batch.group_size], "cursor picked other prompts"
            batch.cursor_state = self.cursor_state()
            batch.group_records = records
            batch.group_versions = [{self.sync.version}] * len(records)
        if kill == ("rollout", step):
            _die(f"rollout of step {step}")
        if record is not None:
            Path(record).mkdir(parents=True, exist_ok=True)
            keep = batch.group_records, batch.group_versions
            batch.group_records, batch.group_versions = [], []
            with open(Path(record) / f"step_{step}.pkl", "wb") as f:
                pickle.dump(batch, f)
            batch.group_records, batch.group_versions = keep
        return batch

    RolloutStage._generate_all = generate_all


def install_kill(point: str, step: int) -> None:
    if point == "update":
        from dcpo_mcore.trainer import update_stage

        orig_update = update_stage.update_policy

        def update_policy(engine, batch, store, settings, *rest, **kw):
            if batch.cursor_state is not None and _current_step[0] == step:
                orig_train = engine.train_step

                def train_step(samples, **kw):
                    _die(f"first optimizer step of step {step}")
                    return orig_train(samples, **kw)

                engine.train_step = train_step
            return orig_update(engine, batch, store, settings, *rest, **kw)

        import dcpo_mcore.trainer.loop as trainer_mod

        trainer_mod.update_policy = update_policy
        _track_step()
    elif point == "sync":
        _during_push(step, lambda: _die(f"weight push of step {step}"))
    elif point == "save":
        from dcpo_mcore.checkpoint.manager import CheckpointManager

        orig = CheckpointManager._publish

        def publish(self, tmp, s):
            if s == step:
                _die(f"checkpoint {step} before its rename")
            return orig(self, tmp, s)

        CheckpointManager._publish = publish
    elif point == "writers":
        from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync

        from dcpo_mcore.checkpoint.manager import CheckpointManager

        orig_save, orig_write = CheckpointManager.save, FileSystemWriterAsync.write_preloaded_data

        def save(self, s, *args, **kwargs):
            _saving[0] = s  # copied into the writer processes megatron forks during this save
            return orig_save(self, s, *args, **kwargs)

        trainer_pid = os.getpid()  # a forked writer's copy still names the trainer, not itself

        def write_preloaded_data(*args, **kwargs):  # a forked writer process (0.16) or a writer thread (0.19)
            if _saving[0] == step and kwargs.get("local_proc_idx", 0) == 0:
                print(f"[kill_trainer] SIGKILL to the trainer from its checkpoint writer, step {step}", flush=True)
                os.kill(trainer_pid, signal.SIGKILL)
                import time
                time.sleep(120)  # a slow write: without the fork hook this process outlives the trainer
            return orig_write(*args, **kwargs)

        CheckpointManager.save = save
        FileSystemWriterAsync.write_preloaded_data = staticmethod(write_preloaded_data)
    elif point != "rollout":
        raise SystemExit(f"unknown kill point {point!r}")


_current_step = [0]
_saving = [None]
_managers: list = []


def _kill_server(where: str) -> None:
    pid = _managers[0].pids()["server_0"]
    print(f"[kill_trainer] SIGKILL to SGLang server_0 (pid {pid}) at {where}", flush=True)
    os.kill(pid, signal.SIGKILL)


def install_server_kill(point: str, step: int) -> None:
    from dcpo_mcore.rollout import ServerManager

    orig_start = ServerManager.start

    def start(self, *args, **kwargs):
        _managers.append(self)
        return orig_start(self, *args, **kwargs)

    ServerManager.start = start
    if point == "rollout":
        from dcpo_mcore.trainer.rollout_stage import RolloutStage

        orig_all = RolloutStage._generate_all

        def generate_all(self, s):
            if s == step:
                _kill_server(f"the rollout of step {step}")
            return orig_all(self, s)

        RolloutStage._generate_all = generate_all
    elif point == "sync":
        _during_push(step, lambda: _kill_server(f"the weight push of step {step}"))
    else:
        raise SystemExit(f"unknown server kill point {point!r}")


def _during_push(step: int, act) -> None:
    """Call ``act()`` once, inside the weight push after step ``step``, as its first attempt streams."""
    from dcpo_mcore.sync.weight_sync import WeightSync

    orig_push, orig_stream = WeightSync.push, WeightSync._stream

    def push(self, version):
        self._act_now = version == str(step)
        return orig_push(self, version)

    def stream(self, timings):
        if getattr(self, "_act_now", False):
            self._act_now = False
            act()
        return orig_stream(self, timings)

    WeightSync.push, WeightSync._stream = push, stream


def _track_step() -> None:
    from dcpo_mcore.trainer.rollout_stage import RolloutStage

    orig = RolloutStage.collect

    def collect(self, step):
        _current_step[0] = step
        return orig(self, step)

    RolloutStage.collect = collect


if __name__ == "__main__":
    argv = sys.argv[1:]
    split = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("--record")
    p.add_argument("--replay")
    p.add_argument("--kill", nargs=2, metavar=("POINT", "STEP"))
    p.add_argument("--kill-server", nargs=2, metavar=("POINT", "STEP"))
    args = p.parse_args(argv[:split])
    kill = (args.kill[0], int(args.kill[1])) if args.kill else None
    install_record_replay(args.record, args.replay, kill)
    if kill is not None:
        install_kill(*kill)
    if args.kill_server:
        install_server_kill(args.kill_server[0], int(args.kill_server[1]))
    from dcpo_mcore.cli import train_main

    sys.exit(train_main(argv[split + 1:]))
