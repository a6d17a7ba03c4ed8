"""A real three-node Slurm cluster on this machine (tools/setup_slurm_cluster.sh, docs/slurm.md
[netns-cluster]): every node is a slurmd in its own network, UTS and mount namespace (dcpo-n1..3, own
address on a bridge), munged and slurmctld are shared. The tests submit the REAL disaggregated launcher,
slurm/dcpo_disagg.sbatch with configs/tiny_multinode.yaml:

* a trivial three-node job: each task sees its own node's hostname and address and resolves the others;
* dcpo-train across the nodes: trainer ranks on dcpo-n1 and dcpo-n2 (DP2, rendezvous at the first trainer
  node), two SGLang servers behind sglang-router on dcpo-n3, weight sync from dcpo-n1's address to
  dcpo-n3 over gloo, log-prob parity after every sync, a checkpoint every step, then SIGUSR1 to the batch
  shell, checkpoint, requeue and resume to the last step;
* the SGLang processes on dcpo-n3 killed with SIGKILL mid-run: the launcher notices, stops every step and
  the job fails, leaving no process behind on any node.

The fixture stops every daemon by PID and removes the namespaces and the bridge; it checks that too.
Skipped, with the reason, only when Slurm or network namespaces cannot be had here (setup exits 3).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.conftest import SKIP_REASON as SGLANG_SKIP, teach_boxed_answers
from tests.integration.slurm_jobs import ROOT, job_field, sh, submit_and_preempt

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SETUP = ROOT / "tools" / "setup_slurm_cluster.sh"
NODES = ("dcpo-n1", "dcpo-n2", "dcpo-n3")
SUBNET = "10.213.0"  # the script's default: node i has SUBNET.(10 + i)
# a CPU cluster has no GPUs to give: this replaces the launcher's #SBATCH --gpus-per-node=8
SBATCH_OPTS = ("-N", "3", "--gpus-per-node=0")
requires_sglang = pytest.mark.skipif(SGLANG_SKIP is not None, reason=SGLANG_SKIP or "")


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" not in status.read_text()
    except FileNotFoundError:
        return False


def _netns_pids(node: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True, check=True).stdout
    return {int(p) for p in out.split() if _alive(int(p))}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


@pytest.fixture(scope="module")
def cluster():
    # not under pytest's tmp dir: its parents are private to root, and slurmctld runs as user slurm
    state = Path(tempfile.mkdtemp(prefix="dcpo-slurm-cluster-test-", dir="/tmp"))
    env = {**os.environ, "DCPO_SLURM_STATE": str(state), "SLURM_CONF": str(state / "slurm.conf")}
    res = subprocess.run(["bash", str(SETUP), "start", "--nodes", "3"], capture_output=True, text=True, env=env,
                         timeout=600)
    if res.returncode == 3:
        pytest.skip(f"a namespace Slurm cluster cannot run on this machine: {res.stderr.strip()}")
    assert res.returncode == 0, f"setup_slurm_cluster.sh start failed:\n{res.stdout}\n{res.stderr}"
    daemons = {"munged": state / "munge" / "munged.pid", "slurmctld": state / "slurmctld.pid",
               **{f"slurmd {n}": state / "nodes" / n / "slurmd.pid" for n in NODES}}
    pids = {name: int(path.read_text()) for name, path in daemons.items()}
    slurmd = {n: pids[f"slurmd {n}"] for n in NODES}
    try:
        yield {"env": env, "state": state, "slurmd": slurmd}
    finally:
        stop = subprocess.run(["bash", str(SETUP), "stop"], capture_output=True, text=True, env=env, timeout=180)
        assert stop.returncode == 0, stop.stderr
        for name, pid in pids.items():
            assert not _alive(pid), f"{name} (pid {pid}) still running after stop"
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not any(n in netns.split() for n in NODES), netns
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        assert "dcpobr0" not in links and "dcpo-v" not in links, links


def _assert_nothing_left(cluster, deadline_s: float = 60) -> None:
    """Every node's namespace holds only its slurmd once the job's steps have ended."""
    deadline = time.monotonic() + deadline_s
    while True:
        left = {n: _netns_pids(n) - {cluster["slurmd"][n]} for n in NODES}
        if not any(left.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not any(left.values()), {n: [(p, _cmdline(p)[:120]) for p in ps] for n, ps in left.items() if ps}
    assert sh("squeue", "-h", env=cluster["env"]).stdout.strip() == ""


@pytest.mark.timeout(300)
def test_each_node_has_its_own_hostname_and_address(cluster, tmp_path):
    script = tmp_path / "t.sbatch"
    out = tmp_path / "out.txt"
    script.write_text("#!/bin/bash\n#SBATCH -N 3\n#SBATCH --ntasks-per-node=1\n"
                      "srun bash -c 'echo $SLURM_PROCID $(hostname) $(hostname -I) "
                      "$(getent hosts dcpo-n1 dcpo-n2 dcpo-n3 | tr -s \" \" | tr \"\\n\" \" \")'\n")
    sh("sbatch", "--wait", "-o", str(out), str(script), timeout=240, env=cluster["env"])
    rows = sorted(ln.split() for ln in out.read_text().splitlines() if ln.strip())
    assert [r[:3] for r in rows] == [[str(i), n, f"{SUBNET}.{11 + i}"] for i, n in enumerate(NODES)], rows
    resolved = {tuple(r[3:]) for r in rows}  # every node resolves every other the same way
    assert resolved == {(f"{SUBNET}.11", "dcpo-n1", f"{SUBNET}.12", "dcpo-n2", f"{SUBNET}.13", "dcpo-n3")}, rows
    _assert_nothing_left(cluster)


def _train_args(tmp_path: Path, model: Path, train: Path, steps: int) -> list[str]:
    return ["configs/tiny_multinode.yaml", f"run_dir={tmp_path / 'run'}", f"model.hf_path={model}",
            f"data.train_files=[{train}]", "data.chat_template=none", f"steps={steps}"]  # as taught below


@requires_sglang
@pytest.mark.timeout(1500)
def test_dcpo_train_across_nodes_syncs_over_node_addresses_and_resumes_after_usr1(cluster, tmp_path, tiny_qwen2):
    from dcpo_mcore.data.synthetic import make_arithmetic_task

    train, _ = make_arithmetic_task(tmp_path / "data", seed=0, n_train=64, n_eval=8)
    model = tmp_path / "model"
    shutil.copytree(tiny_qwen2, model)
    teach_boxed_answers(model, train)  # some rewards differ, so updates move the weights and parity means something
    steps = 8
    env = {**cluster["env"], "DCPO_LOG_ROOT": str(tmp_path / "logs")}
    job, run_dir = submit_and_preempt(tmp_path, env, _train_args(tmp_path, model, train, steps),
                                      signal_args=["--batch", "-s", "USR1"], after_lines=2, timeout_s=1400,
                                      script="slurm/dcpo_disagg.sbatch", sbatch_opts=SBATCH_OPTS)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    step_of = [r["step"] for r in rows]
    assert step_of[-1] == steps and sorted(set(step_of)) == list(range(1, steps + 1)), step_of
    # log-prob parity between the trainer and the servers on dcpo-n3 after every sync (float32: 1e-3)
    assert all(r["sync/logprob_max_abs_diff"] < 1e-3 and r["invariant/mismatch_within_bound"] == 1.0 for r in rows)
    assert any(r["adv/nonzero_ratio"] > 0 and r["loss/grad_norm"] > 0 for r in rows), "no update moved the weights"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{steps:08d}"
    assert job_field(job, "Restarts", env) == "1" and job_field(job, "JobState", env) == "COMPLETED"

    logs = tmp_path / "logs" / f"dcpo-disagg-{job}"
    assert {"launcher.log", "sglang.log", "router.log", "trainer.log"} <= {p.name for p in logs.iterdir()}
    trainer = (logs / "trainer.log").read_text()
    assert trainer.count("===== trainer: job") == 2 and "resuming at step" in trainer
    # two ranks on two hosts; the servers join the weight-update group at dcpo-n1's bridge address
    assert trainer.count("world 2 rank(s) on 2 host(s) (dcpo-n1, dcpo-n2): TP1 PP1 DP2") == 2, trainer[-3000:]
    assert trainer.count(f"over gloo at {SUBNET}.11:") >= 2 and "over gloo at 127.0.0.1" not in trainer
    launcher = (logs / "launcher.log").read_text()
    assert "servers: http://dcpo-n3:" in launcher and "MASTER_ADDR=dcpo-n1" in launcher
    _assert_nothing_left(cluster)


@requires_sglang
@pytest.mark.timeout(900)
def test_killed_server_processes_fail_the_job_and_every_step_ends(cluster, tmp_path, tiny_qwen2):
    from dcpo_mcore.data.synthetic import make_arithmetic_task

    train, _ = make_arithmetic_task(tmp_path / "data", seed=0, n_train=32, n_eval=4)
    # the launch-contract stand-in trainer (tests/integration/test_slurm.py): seconds per step, no megatron
    env = {**cluster["env"], "DCPO_LOG_ROOT": str(tmp_path / "logs"),
           "DCPO_TRAIN_MODULE": "tests.integration.test_slurm", "DCPO_CONTRACT_STEP_S": "2"}
    out = tmp_path / "job.out"
    job = sh("sbatch", "--parsable", "-o", str(out), *SBATCH_OPTS, "slurm/dcpo_disagg.sbatch",
             *_train_args(tmp_path, tiny_qwen2, train, 500), env=env).stdout.strip().split(";")[0]
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 600
    try:
        while not (metrics.exists() and metrics.read_text().strip()):
            assert time.monotonic() < deadline, f"the trainer never ran:\n{out.read_text() if out.exists() else ''}"
            assert job_field(job, "JobState", env) in ("PENDING", "RUNNING"), out.read_text()
            time.sleep(2)
        # everything the job runs on the rollout node except Slurm's own daemons: servers, schedulers, router
        victims = [p for p in _netns_pids("dcpo-n3") - {cluster["slurmd"]["dcpo-n3"]}
                   if not _cmdline(p).startswith(("slurmstepd", "/usr/sbin/slurmstepd", "srun", "/usr/bin/srun"))]
        assert any("sglang" in _cmdline(p) or "dcpo_mcore.launch.serve" in _cmdline(p) for p in victims), victims
        for pid in victims:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        while job_field(job, "JobState", env) in ("PENDING", "RUNNING", "COMPLETING"):
            assert time.monotonic() < deadline, f"the job did not end after its servers died:\n{out.read_text()}"
            time.sleep(2)
    finally:
        sh("scancel", job, check=False, env=env)
    assert job_field(job, "JobState", env) == "FAILED", out.read_text()
    log = out.read_text()
    assert "error: step sglang exited while the trainer was running" in log or \
        "error: step router exited while the trainer was running" in log, log
    assert "stopping step trainer" in log, log
    assert len(metrics.read_text().splitlines()) < 500
    _assert_nothing_left(cluster)
