"""Real Slurm on this machine: tools/setup_slurm.sh installs (apt) and starts a one-node cluster
(munge + slurmctld + slurmd, no systemd), and the tests submit through the REAL launcher scripts.

* a trivial ``sbatch --wait`` job with a 2-task srun step;
* slurm/dcpo_colocated.sbatch with the contract stand-in trainer (``contract_trainer_main`` below, run as
  ``python -m tests.integration.test_slurm``: the dcpo-train launch contract, no megatron, seconds per run):
  the real SGLang server step, a 2-rank torchrun trainer step, then SIGUSR1 to the job's steps
  (``scancel -s USR1``), checkpoint + PREEMPTED, ``scontrol requeue``, resume, completion.

The real ``dcpo-train`` under Slurm, with the USR1 sent to the batch shell (``scancel --batch -s USR1``,
forwarded by the launcher), requeue and resume, runs across three nodes in test_slurm_cluster.py; the
same job on one node is no longer repeated here (CI time).

The daemons are stopped by PID at the end (tools/setup_slurm.sh stop). Skipped, with the reason, only when
Slurm cannot be installed here (not root / no apt-get: setup exits 3).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import SKIP_REASON as SGLANG_SKIP
from tests.integration.slurm_jobs import job_field, sh, submit_and_preempt

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "tools" / "setup_slurm.sh"


@pytest.fixture(scope="module")
def slurm():
    # not under pytest's tmp dir: its parents are private to root, and slurmctld runs as user slurm
    state = Path(tempfile.mkdtemp(prefix="dcpo-slurm-test-", dir="/tmp"))
    env = {**os.environ, "DCPO_SLURM_STATE": str(state)}
    res = subprocess.run(["bash", str(SETUP), "start"], capture_output=True, text=True, env=env, timeout=600)
    if res.returncode == 3:
        pytest.skip(f"Slurm cannot be installed on this machine: {res.stderr.strip()}")
    assert res.returncode == 0, f"setup_slurm.sh start failed:\n{res.stdout}\n{res.stderr}"
    pids = {n: int((state / f"{n}.pid").read_text()) for n in ("munged", "slurmctld", "slurmd")}
    try:
        yield state
    finally:
        stop = subprocess.run(["bash", str(SETUP), "stop"], capture_output=True, text=True, env=env, timeout=120)
        assert stop.returncode == 0, stop.stderr
        for name, pid in pids.items():
            status = Path(f"/proc/{pid}/status")
            assert not status.exists() or "\nState:\tZ" in status.read_text(), f"{name} (pid {pid}) still running"


@pytest.mark.timeout(300)
def test_trivial_sbatch_wait_with_two_task_step(slurm, tmp_path):
    script = tmp_path / "t.sbatch"
    out = tmp_path / "out.txt"
    script.write_text("#!/bin/bash\n#SBATCH --ntasks=2\nsrun bash -c 'echo task $SLURM_PROCID of $SLURM_NTASKS'\n")
    sh("sbatch", "--wait", "-o", str(out), str(script), timeout=240)
    lines = sorted(out.read_text().split("\n"))
    assert "task 0 of 2" in lines and "task 1 of 2" in lines


def _launch_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DCPO_LOG_ROOT": str(tmp_path / "logs"), **extra}


@pytest.mark.skipif(SGLANG_SKIP is not None, reason=SGLANG_SKIP or "")
@pytest.mark.timeout(1500)
def test_colocated_launcher_with_contract_trainer_requeues_and_resumes(slurm, tmp_path, tiny_qwen2):
    from dcpo_mcore.data.synthetic import make_arithmetic_task

    train, _ = make_arithmetic_task(tmp_path / "data", seed=0, n_train=32, n_eval=4)
    env = _launch_env(tmp_path, DCPO_TRAIN_MODULE="tests.integration.test_slurm", DCPO_CONTRACT_STEP_S="3")
    args = ["configs/tiny_test.yaml", f"run_dir={tmp_path / 'run'}", f"model.hf_path={tiny_qwen2}",
            "model.vocab_size=null", "model.max_position_embeddings=null",  # the checkpoint's own
            "parallel.tensor_model_parallel_size=2", f"data.train_files=[{train}]",
            "steps=8", "checkpoint.save_interval=2"]
    job, run_dir = submit_and_preempt(tmp_path, env, args, signal_args=["-s", "USR1"], after_lines=2,
                                       timeout_s=1400)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))  # no step lost or repeated across the requeue
    assert {r["attempt"] for r in rows} == {0, 1} and all(r["world"] == 2 and r["allreduce"] == 3.0 for r in rows)
    assert (run_dir / "checkpoints" / "latest").read_text() == "8"
    assert not (run_dir / "PREEMPTED").exists() or rows[-1]["step"] == 8
    assert job_field(job, "Restarts") == "1" and job_field(job, "JobState") == "COMPLETED"
    logs = tmp_path / "logs" / f"dcpo-colocated-{job}"
    assert {"launcher.log", "sglang.log", "trainer.log"} <= {p.name for p in logs.iterdir()}
    assert (logs / "trainer.log").read_text().count("===== trainer: job") == 2
    assert sh("squeue", "-h").stdout.strip() == ""  # nothing left running


# ----------------------------------------------------------------------------------------------------------
# The contract stand-in for dcpo-train (DCPO_TRAIN_MODULE=tests.integration.test_slurm). It follows the
# launch contract: --config X.yaml key=value..., ranks from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (a real
# gloo group), rank 0 asks every rollout.server_urls server for one /generate, `steps` steps of
# DCPO_CONTRACT_STEP_S seconds with one metrics.jsonl line each, checkpoints <checkpoint.dir>/step_N +
# latest, resume=auto, and SIGUSR1 -> (all ranks agree at a step boundary) checkpoint, RUN_DIR/PREEMPTED, exit 0.


def _generate(url: str) -> int:
    body = json.dumps({"text": "What is 1+1?", "sampling_params": {"max_new_tokens": 4, "temperature": 0}}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/generate", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        out = json.loads(resp.read())
    return int(out["meta_info"]["completion_tokens"])


def contract_trainer_main(argv: list[str] | None = None) -> int:
    import torch
    import torch.distributed as dist

    from dcpo_mcore.config import load_config, save_resolved_config

    ap = argparse.ArgumentParser(prog="contract_trainer")
    ap.add_argument("--config", required=True)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    preempt = {"flag": False}
    signal.signal(signal.SIGUSR1, lambda *_: preempt.__setitem__("flag", True))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    run_dir, ckpt = Path(cfg.run_dir), Path(cfg.checkpoint.dir)
    step_s = float(os.environ.get("DCPO_CONTRACT_STEP_S", "1"))
    start = 0
    if cfg.checkpoint.resume == "auto" and (ckpt / "latest").is_file():
        start = int((ckpt / "latest").read_text().strip())
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved_config(cfg, run_dir)
        tokens = sum(_generate(u) for u in cfg.rollout.server_urls)
        print(f"[contract_trainer] world {world}, resuming after step {start}, {tokens} tokens from "
              f"{len(cfg.rollout.server_urls)} server(s)", flush=True)

    def save(step: int) -> None:
        if rank == 0:
            d = ckpt / f"step_{step}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "state.json").write_text(json.dumps({"step": step, "world": world}))
            (ckpt / "latest").write_text(str(step))

    for step in range(start + 1, cfg.steps + 1):
        flag = torch.tensor([1.0 if preempt["flag"] else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            save(step - 1)
            if rank == 0:
                (run_dir / "PREEMPTED").write_text(f"after step {step - 1}\n")
                print(f"[contract_trainer] SIGUSR1: checkpointed step {step - 1}, exiting 0", flush=True)
            dist.destroy_process_group()
            return 0
        time.sleep(step_s)
        x = torch.tensor([float(rank + 1)])
        dist.all_reduce(x)
        if rank == 0:
            with open(run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps({"step": step, "world": world, "allreduce": x.item(),
                                     "attempt": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)}) + "\n")
        if cfg.checkpoint.save_interval and step % cfg.checkpoint.save_interval == 0:
            save(step)
    save(cfg.steps)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(contract_trainer_main())
