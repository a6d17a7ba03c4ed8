"""The small launch CLIs (wait_healthy, ranks, serve) and the shell scripts' static checks."""
from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from dcpo_mcore.launch import ranks, serve
from dcpo_mcore.launch.wait_healthy import pid_alive, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = [ROOT / "slurm/dcpo_colocated.sbatch", ROOT / "slurm/dcpo_disagg.sbatch", ROOT / "slurm/common.sh",
           ROOT / "tools/setup_slurm.sh", ROOT / "tools/setup_slurm_cluster.sh", ROOT / "tools/slurm_lib.sh"]


# ------------------------------------------------------------------------------------------ wait_healthy
def test_wait_healthy_until_all_answer():
    calls = {"a": 0, "b": 0}

    def check(url, path):
        calls[url] += 1
        return calls[url] >= (3 if url == "b" else 1)

    assert wait_healthy(["a", "b"], 10, check=check, interval_s=0.01, log=lambda m: None) is None
    assert calls == {"a": 1, "b": 3}  # a healthy url is not asked again


def test_wait_healthy_deadline_and_dead_process_are_one_line():
    why = wait_healthy(["http://x:1"], 0.05, check=lambda u, p: False, interval_s=0.01, log=lambda m: None)
    assert "http://x:1 not healthy" in why and "\n" not in why
    why = wait_healthy(["u"], 60, pids=[42], check=lambda u, p: False, alive=lambda p: False, log=lambda m: None)
    assert "process 42 exited" in why


def test_wait_healthy_cli_against_a_real_http_server():
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        run = lambda *a: subprocess.run([sys.executable, "-m", "dcpo_mcore.launch.wait_healthy", *a],  # noqa: E731
                                        capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert run(url, "--deadline", "5").returncode == 0
        bad = run(url, "--deadline", "1", "--path", "/nope", "--interval", "0.2")
        assert bad.returncode == 1 and bad.stderr.startswith("wait_healthy: error:")
    finally:
        srv.shutdown()


def test_pid_alive():
    assert pid_alive(os.getpid())
    p = subprocess.Popen(["true"])
    p.wait()
    assert not pid_alive(p.pid)


# ------------------------------------------------------------------------------------------ ranks
def _ranks_args(**kw):
    base = dict(nproc_per_node=4, master_addr="n1", master_port=12345, module="dcpo_mcore.cli",
                rest=["--config", "x.yaml", "a.b=1"])
    base.update(kw)
    return SimpleNamespace(**base)


def test_torchrun_argv_from_slurm_task():
    argv = ranks.torchrun_argv(_ranks_args(), {"SLURM_NTASKS": "3", "SLURM_PROCID": "2"})
    assert argv == ["--nnodes", "3", "--node-rank", "2", "--nproc-per-node", "4", "--master-addr", "n1",
                    "--master-port", "12345", "--max-restarts", "0", "--module", "dcpo_mcore.cli",
                    "--config", "x.yaml", "a.b=1"]


def test_task_env_maps_slurm_to_torch_variables():
    env = ranks.task_env(_ranks_args(), {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8",
                                         "SLURM_NTASKS_PER_NODE": "4"})
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == ("5", "1", "8", "4")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("n1", "12345")


def test_ranks_tasks_mode_execs_the_module_with_rank_env(tmp_path):
    mod = tmp_path / "show_env.py"
    mod.write_text("import os, sys\nprint(os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['MASTER_PORT'], "
                   "sys.argv[1:])\n")
    env = {**os.environ, "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    res = subprocess.run([sys.executable, "-m", "dcpo_mcore.launch.ranks", "tasks", "--nproc-per-node", "2",
                          "--master-addr", "h", "--master-port", "999", "--module", "show_env", "--", "--config",
                          "it's.yaml"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1 2 999 ['--config', \"it's.yaml\"]"
    res = subprocess.run([sys.executable, "-m", "dcpo_mcore.launch.ranks", "tasks", "--nproc-per-node", "2",
                          "--master-addr", "h", "--master-port", "1"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "put -- before" in res.stderr


# ------------------------------------------------------------------------------------------ serve
def test_server_command_cpu(tmp_path, monkeypatch):
    import dcpo_mcore.rollout.server as server_mod

    monkeypatch.setattr(server_mod, "_cuda_available", lambda: False)
    model = tmp_path / "m"
    model.mkdir()
    args = SimpleNamespace(config=str(ROOT / "configs/tiny_test.yaml"), overrides=[f"model.hf_path={model}", "seed=7"],
                           port_base=20004, host="127.0.0.1", cuda_visible_devices="")
    cmd, env = serve.server_command(args, {"SLURM_LOCALID": "1", "PYTHONPATH": "/x"})
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    assert cmd[cmd.index("--port") + 1] == "20006" and cmd[cmd.index("--nccl-port") + 1] == "20007"
    assert cmd[cmd.index("--device") + 1] == "cpu" and cmd[cmd.index("--random-seed") + 1] == "8"
    assert env["SGLANG_USE_CPU_ENGINE"] == "1" and env["HF_HUB_OFFLINE"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep)[0].endswith("cpu_shim") and env["PYTHONPATH"].endswith("/x")


def test_server_command_needs_hf_path():
    args = SimpleNamespace(config=str(ROOT / "configs/tiny_test.yaml"), overrides=[], port_base=1, host="h",
                           cuda_visible_devices="")
    with pytest.raises(SystemExit, match="model.hf_path is not set"):
        serve.server_command(args, {})


def test_router_command():
    args = SimpleNamespace(host="0.0.0.0", port=10001, metrics_port=10002, request_timeout_s=60,
                           worker_urls=["http://a:1", "http://b:2"])
    cmd = serve.router_command(args)
    assert cmd[1:3] == ["-m", "sglang_router.launch_router"]
    assert cmd[cmd.index("--worker-urls") + 1: cmd.index("--worker-urls") + 3] == ["http://a:1", "http://b:2"]
    assert cmd[cmd.index("--prometheus-port") + 1] == "10002"


def test_serve_ignores_sigusr1_in_the_execd_process(tmp_path, monkeypatch):
    # what _exec leaves behind: SIGUSR1 ignored, inherited across exec by every SGLang process
    code = ("import signal, os; from dcpo_mcore.launch import serve; "
            "serve._exec(['/bin/sh', '-c', 'kill -USR1 $$; echo survived'], dict(os.environ))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0 and "survived" in res.stdout


# ------------------------------------------------------------------------------------------ scripts
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_scripts_pass_shellcheck():
    res = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize("name", ["dcpo_colocated.sbatch", "dcpo_disagg.sbatch"])
def test_sbatch_headers(name):
    text = (ROOT / "slurm" / name).read_text()
    for opt in ("#SBATCH --signal=USR1@120", "#SBATCH --requeue", "#SBATCH --open-mode=append"):
        assert opt in text
    body = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    # the script body only sets up the shell and hands "$@" to the shared driver
    assert body == ["set -Eeuo pipefail", 'source "${DCPO_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm/common.sh"',
                    f'dcpo_main {"colocated" if "colocated" in name else "disagg"} "$@"']


def test_common_sh_never_evals_user_input():
    text = (ROOT / "slurm/common.sh").read_text()
    evals = [ln.strip() for ln in text.splitlines() if "eval " in ln and not ln.strip().startswith("#")]
    assert evals == ['eval "$env_sh"']  # only the shlex-quoted output of slurm_env
    assert "$*" not in text.replace('"$*"', "")  # user words are always passed as "$@"
