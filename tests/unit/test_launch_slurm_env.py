"""dcpo_mcore/launch/slurm_env.py: node lists, ports, URLs and step command lines of a Slurm job, and
their shell encoding (no user string is re-parsed by bash)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dcpo_mcore.launch.settings import LaunchError
from dcpo_mcore.launch.slurm_env import port_block, resolve, to_shell

ROOT = Path(__file__).resolve().parents[1].parent
RECIPE_14B = str(ROOT / "configs/qwen2.5-14b_dcpo.yaml")
TINY = str(ROOT / "configs/tiny_test.yaml")
MULTINODE = str(ROOT / "configs/tiny_multinode.yaml")  # its architecture comes from a checkpoint: give one here
TINY_ARCH = ("model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=128", "model.num_attention_heads=4",
             "model.num_query_groups=2", "model.vocab_size=64", "model.max_position_embeddings=128")
HOSTILE = "model.hf_path=/ckpt/a b'c\"$(touch /tmp/pwned)`id`;*"


def _disagg(overrides=(), hosts=("n1", "n2", "n3", "n4"), job="1234"):
    return resolve(RECIPE_14B, list(overrides), mode="disagg", env={"SLURM_JOB_ID": job, "SLURM_JOB_NAME": "dcpo"},
                   hostnames=list(hosts), python="/venv/bin/python")


def test_disagg_layout_ports_and_urls():
    jp = _disagg()
    base = port_block(1234)
    assert jp.train_hosts == ["n1", "n2"] and jp.rollout_hosts == ["n3", "n4"]
    assert (jp.master_addr, jp.master_port) == ("n1", base)
    # 14B recipe: 8 GPUs per node / server TP 2 = 4 servers per rollout node, behind one router on n3
    assert jp.server_urls == [f"http://{h}:{base + 4 + 2 * i}" for h in ("n3", "n4") for i in range(4)]
    assert jp.router_url == f"http://n3:{base + 1}" and jp.attach_urls == [jp.router_url]
    assert jp.log_dir == Path("logs/slurm/dcpo-1234") and jp.preempt_marker == Path("runs/qwen2.5-14b_dcpo/PREEMPTED")
    # trainer: 2 nodes x 1 torchrun task, 8 ranks each, attached to the router only
    assert jp.srun_train[:3] == ["--exact", "--mem=0", "--gpus-per-node=8"] and "--nodelist" in jp.srun_train
    assert jp.srun_train[jp.srun_train.index("--nodelist") + 1] == "n1,n2"
    t = jp.train_cmd
    assert t[:4] == ["/venv/bin/python", "-m", "dcpo_mcore.launch.ranks", "torchrun"]
    assert t[t.index("--nproc-per-node") + 1] == "8" and t[t.index("--master-addr") + 1] == "n1"
    tail = t[t.index("--") + 1:]
    assert tail[:2] == ["--config", RECIPE_14B]
    assert tail[-3:] == [f"rollout.server_urls=[{jp.router_url}]", "rollout.num_servers=0", "rollout.use_router=false"]
    # servers: 4 tasks per node on n3,n4; router on n3 with every worker
    s = jp.srun_server
    assert s[s.index("--ntasks") + 1] == "8" and s[s.index("--ntasks-per-node") + 1] == "4"
    assert jp.router_cmd[jp.router_cmd.index("--worker-urls") + 1:] == jp.server_urls


def test_disagg_steps_get_their_nodes_cpus_and_the_router_no_gpus():
    jp = resolve(RECIPE_14B, [], mode="disagg", env={"SLURM_JOB_ID": "9", "SLURM_CPUS_ON_NODE": "96"},
                 hostnames=["n1", "n2", "n3", "n4"], python="/venv/bin/python")
    assert "--cpus-per-task=96" in jp.srun_train  # one torchrun task per trainer node
    assert "--cpus-per-task=24" in jp.srun_server and "--gpus-per-node=8" in jp.srun_server  # 4 servers/node
    # the router shares n3 with the server step, which holds all its GPUs: it must ask for none
    assert jp.srun_router[:2] == ["--overlap", "--gres=none"]
    assert not any(o.startswith(("--gpus", "--exact", "--cpus-per-task")) for o in jp.srun_router)
    assert not any(o.startswith("--cpus-per-task") for o in _disagg().srun_train)  # unknown CPU count: Slurm's


def test_cpu_disagg_router_asks_for_no_gres_option():
    # a CPU cluster has no GresTypes and refuses --gres=none: the router step only overlaps
    jp = resolve(MULTINODE, list(TINY_ARCH), mode="disagg",
                 env={"SLURM_JOB_ID": "9", "SLURM_CPUS_ON_NODE": "2"}, hostnames=["a", "b", "c"])
    assert jp.srun_router[:2] == ["--overlap", "--nodes"]
    assert "--cpus-per-task=1" in jp.srun_server and not any("gpu" in o or "gres" in o for o in jp.srun_server)
    assert jp.train_hosts == ["a", "b"] and jp.rollout_hosts == ["c"] and len(jp.server_urls) == 2


def test_ports_are_stable_per_job_and_differ_between_jobs():
    assert _disagg(job="77").master_port == _disagg(job="77").master_port
    a, b = port_block(77), port_block(78)
    assert abs(a - b) >= 32 and all(10000 <= p < 32768 for p in (a, b, port_block(10 ** 9 + 699)))


def test_the_validated_config_reaches_the_trainer_including_hostile_strings():
    jp = _disagg([HOSTILE])
    assert HOSTILE in jp.train_cmd and HOSTILE in jp.server_cmd
    # bash evaluates the assignments and gives back exactly the same words
    script = to_shell(jp) + 'printf "%s\\0" "${DCPO_TRAIN_CMD[@]}"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True).stdout.decode()
    assert out.split("\0")[:-1] == [str(x) for x in jp.train_cmd]
    assert not Path("/tmp/pwned").exists()


def test_colocated_cpu_without_launch_section():
    jp = resolve(TINY, ["parallel.tensor_model_parallel_size=2"], mode="colocated",
                 env={"SLURM_JOB_ID": "5"}, hostnames=["vm"], python="py")
    assert jp.master_addr == "127.0.0.1" and jp.server_urls == [f"http://127.0.0.1:{port_block(5) + 4}"]
    assert jp.router_url is None and jp.router_cmd == [] and jp.attach_urls == jp.server_urls
    assert jp.srun_train[0] == "--overlap" and jp.train_cmd[jp.train_cmd.index("--nproc-per-node") + 1] == "2"
    assert "--cuda-visible-devices" not in jp.train_cmd


def test_colocated_gpu_split_from_slurm_gpus():
    jp = resolve(TINY, ["rollout.num_servers=4"], mode="colocated",
                 env={"SLURM_JOB_ID": "5", "SLURM_GPUS_ON_NODE": "8", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"},
                 hostnames=["g1"], python="py")
    assert jp.server_cmd[jp.server_cmd.index("--cuda-visible-devices") + 1] == "0,1,2,3"
    assert jp.train_cmd[jp.train_cmd.index("--cuda-visible-devices") + 1] == "4,5,6,7"
    assert jp.train_cmd[jp.train_cmd.index("--nproc-per-node") + 1] == "4"
    assert jp.router_url is not None and len(jp.server_urls) == 4


@pytest.mark.parametrize("kwargs, needle", [
    (dict(hosts=("n1", "n2")), "submit with sbatch -N 4"),
    (dict(overrides=["rollout.server_urls=[http://x:1]", "rollout.num_servers=0", "rollout.use_router=false"]),
     "start their own servers"),
    (dict(overrides=["parallel.tensor_model_parallel_size=3"]), "must divide model.num_attention_heads"),
    (dict(overrides=["parallel.micro_batch_size=64"]), "parallel.micro_batch_size"),
])
def test_errors_are_one_line_launch_errors(kwargs, needle):
    with pytest.raises(LaunchError) as err:
        _disagg(**kwargs)
    assert needle in str(err.value).splitlines()[0]


def test_cli_outside_slurm_and_explain():
    res = subprocess.run([sys.executable, "-m", "dcpo_mcore.launch.slurm_env", "--mode", "disagg", RECIPE_14B],
                         capture_output=True, text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 2 and "not inside a Slurm job" in res.stderr
    res = subprocess.run([sys.executable, "-m", "dcpo_mcore.launch.slurm_env", "--mode", "disagg", "--explain",
                          "--hostnames", "a,b,c,d", "--job-id", "9", RECIPE_14B], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "MASTER_ADDR=a" in res.stdout and "router: http://c:" in res.stdout
    res = subprocess.run([sys.executable, "-m", "dcpo_mcore.launch.slurm_env", "--mode", "disagg",
                          "--hostnames", "a", "--job-id", "9", RECIPE_14B], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
