"""Submitting and watching real Slurm jobs from the tests (test_slurm.py: one node; test_slurm_cluster.py:
three nodes in network namespaces). ``env`` is the environment of every Slurm command: the namespace
cluster's carries SLURM_CONF, the one-node cluster uses /etc/slurm/slurm.conf."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sh(*cmd: str, timeout: float = 60, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=env)
    if check and res.returncode:
        raise AssertionError(f"{' '.join(cmd)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def job_field(job: str, key: str, env: dict | None = None) -> str | None:
    res = sh("scontrol", "show", "job", job, check=False, env=env)
    for tok in res.stdout.split():
        if tok.startswith(key + "="):
            return tok.split("=", 1)[1]
    return None


def submit_and_preempt(tmp_path: Path, env: dict, args: list[str], *, signal_args: list[str], after_lines: int,
                       timeout_s: float, script: str = "slurm/dcpo_colocated.sbatch",
                       sbatch_opts: tuple[str, ...] = ()) -> tuple[str, Path]:
    """sbatch --wait ``script``; once RUN_DIR/metrics.jsonl has ``after_lines`` lines, send USR1 with
    ``scancel signal_args``; hurry the requeued job past Slurm's requeue delay; wait for the end."""
    run_dir = tmp_path / "run"
    out = tmp_path / "job.out"
    proc = subprocess.Popen(["sbatch", "--wait", "--parsable", "-o", str(out), *sbatch_opts, script, *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = None
    deadline = time.monotonic() + timeout_s
    metrics = run_dir / "metrics.jsonl"
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if job is None:
                ids = sh("squeue", "-h", "-o", "%i %j", env=env).stdout.split()
                job = ids[0] if ids else None
            if metrics.exists() and len(metrics.read_text().splitlines()) >= after_lines:
                break
            time.sleep(2)
        assert proc.poll() is None, f"the job ended before it could be preempted:\n{out.read_text()}"
        assert job is not None and metrics.exists(), f"no progress in time:\n{out.read_text() if out.exists() else ''}"
        sh("scancel", *signal_args, job, env=env)
        while time.monotonic() < deadline and proc.poll() is None:
            if job_field(job, "JobState", env) == "PENDING" and job_field(job, "Restarts", env) == "1":
                sh("scontrol", "update", f"JobId={job}", "StartTime=now", check=False, env=env)  # skip the requeue delay
            time.sleep(2)
        rc = proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            if job:
                sh("scancel", job, check=False, env=env)
            proc.kill()
    log = out.read_text()
    assert rc == 0, f"sbatch --wait exit {rc}:\n{log}"
    return job, run_dir
