"""ServerManager with the stdlib fake server (tests/fakes/fake_sglang.py) in real subprocesses:
health waiting, log files, port collisions, launch failures with the log tail, restart of a dead
server, shutdown of only our own process groups, and the server command line (CPU/GPU flags)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dcpo_mcore.rollout import EngineAdmin, LaunchSpec, ServerLaunchError, ServerManager
from dcpo_mcore.rollout.ports import PORTS, PortAllocator
from dcpo_mcore.rollout.server import CPU_SERVER_ARGS, build_server_command
from tests.proc_helpers import running as _alive

FAKE = "tests.fakes.fake_sglang"
REPO = Path(__file__).resolve().parents[2]


def _spec(**kw) -> LaunchSpec:
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    base = dict(model_path="fake-model", device="cpu", server_module=FAKE, shutdown_grace_s=3.0,
                startup_timeout_s=60.0, watch_interval_s=0.2, env=env)
    return LaunchSpec(**{**base, **kw})


def test_launches_servers_with_logs_and_stops_only_them(tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with ServerManager(_spec(num_servers=2, use_router=False), tmp_path) as servers:
            urls, pids = servers.worker_urls, servers.pids()
            assert len(set(urls)) == 2 and servers.generate_urls() == urls and servers.router_url is None
            assert all(EngineAdmin(u).health() for u in urls)
            assert all(EngineAdmin(u).model_info()["model_path"] == "fake-model" for u in urls)
            for i in range(2):
                log = (tmp_path / "sglang" / f"server_{i}.log").read_text()
                assert "launch 1 of server_" in log and "--model-path fake-model" in log
                assert "--nccl-port" in log and "--sleep-on-idle" in log  # CPU flags on the command line
            assert all(_alive(p) for p in pids.values())
        assert not any(_alive(p) for p in pids.values())
        assert bystander.poll() is None  # not ours: untouched
    finally:
        bystander.kill()
        bystander.wait()


def test_a_server_that_exits_fails_fast_with_its_log_tail(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(ServerLaunchError) as info:
        ServerManager(_spec(server_module="dcpo_mcore.rollout.no_such_module"), tmp_path).start()
    assert time.monotonic() - t0 < 20
    msg = str(info.value)
    assert msg.splitlines()[0].startswith("SGLang server_0 (http://127.0.0.1:") and "exited with code 1" in msg
    assert "No module named dcpo_mcore.rollout.no_such_module" in msg  # from the log tail
    assert str(tmp_path / "sglang" / "server_0.log") in msg.splitlines()[0]


def test_health_wait_has_a_deadline(tmp_path):
    spec = _spec(startup_timeout_s=1.0, extra_args=["--startup-delay", "30"])
    t0 = time.monotonic()
    with pytest.raises(ServerLaunchError, match="not healthy 1 s after launch"):
        ServerManager(spec, tmp_path).start()
    assert time.monotonic() - t0 < 10


def test_port_taken_between_pick_and_bind_is_retried_on_a_new_port(tmp_path, monkeypatch):
    """Another HTTP server grabs our port first and even answers /health: it must not be mistaken
    for ours; our server fails to bind, and is relaunched on a fresh port."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Foreign(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    squatter = ThreadingHTTPServer(("127.0.0.1", 0), Foreign)
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    taken = squatter.server_address[1]
    real_pick, picks = PORTS.pick, []

    def pick(host="127.0.0.1", attempts=200):
        picks.append(None)
        return taken if len(picks) == 1 else real_pick(host, attempts)  # the first pick gets "stolen"

    monkeypatch.setattr(PORTS, "pick", pick)
    try:
        with ServerManager(_spec(extra_args=["--startup-delay", "0.5"]), tmp_path) as servers:
            assert servers.worker_urls[0] != f"http://127.0.0.1:{taken}"
            assert EngineAdmin(servers.worker_urls[0]).model_info()["model_path"] == "fake-model"
            log = servers.log_path(0).read_text()
            assert "address already in use" in log and "launch 2 of server_0" in log
    finally:
        squatter.shutdown()
        squatter.server_close()


def test_a_dead_server_is_restarted_on_the_same_port(tmp_path, caplog):
    with ServerManager(_spec(), tmp_path) as servers:
        url, pid = servers.worker_urls[0], servers.pids()["server_0"]
        EngineAdmin(url).update_weight_version("v1")
        with caplog.at_level("WARNING", logger="dcpo_mcore.rollout"):
            os.kill(pid, signal.SIGKILL)
            _wait_for(lambda: servers.restarts()["server_0"] == 1)
            servers.wait_ready(30)
        assert servers.worker_urls[0] == url and servers.pids()["server_0"] != pid
        assert EngineAdmin(url).weight_version() == "default"  # a fresh process
        died = [r.getMessage() for r in caplog.records if "died" in r.getMessage()]
        assert len(died) == 1 and url in died[0] and "exited with code -9" in died[0] and "\n" not in died[0]


def _wait_for(cond, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_restarts_are_bounded(tmp_path):
    with ServerManager(_spec(max_restarts=1), tmp_path) as servers:
        os.kill(servers.pids()["server_0"], signal.SIGKILL)
        _wait_for(lambda: servers.restarts()["server_0"] == 1)
        servers.wait_ready(30)
        os.kill(servers.pids()["server_0"], signal.SIGKILL)
        _wait_for(lambda: servers.states()["server_0"] == "failed")
        assert servers.is_failed(servers.worker_urls[0]) and servers.restarts()["server_0"] == 1


def test_two_dead_servers_restart_in_parallel(tmp_path):
    # a fake server takes 3 s to come up: restarted one after the other, the second would be
    # launched >= 3 s after the first; in parallel both are relaunched at once
    with ServerManager(_spec(num_servers=2, use_router=False, extra_args=["--startup-delay", "3"]),
                       tmp_path) as servers:
        old = servers.pids()
        for pid in old.values():
            os.kill(pid, signal.SIGKILL)
        relaunched: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while len(relaunched) < 2 and time.monotonic() < deadline:
            for name, pid in servers.pids().items():
                if pid != old[name]:
                    relaunched.setdefault(name, time.monotonic())
            time.sleep(0.02)
        assert len(relaunched) == 2 and abs(relaunched["server_0"] - relaunched["server_1"]) < 2.0
        servers.wait_ready(60)
        assert servers.restarts() == {"server_0": 1, "server_1": 1}


def test_rollout_survives_a_crash_mid_batch(tmp_path):
    pytest.importorskip("aiohttp")
    from dcpo_mcore.rollout import ClientOptions, RolloutClient, SamplingParams

    marker = tmp_path / "died-once"
    spec = _spec(extra_args=["--die-after", "4", "--die-once-file", str(marker), "--token-delay", "0.005"])
    with ServerManager(spec, tmp_path) as servers:
        client = RolloutClient(servers, ClientOptions(max_concurrency=2, backoff_initial_s=0.02))
        groups = client.generate_sync([[i, i] for i in range(5)], SamplingParams(max_new_tokens=6), n=3)
        assert [len(g) for g in groups] == [3] * 5
        assert all(len(s.output_ids) == 6 for g in groups for s in g)
        assert marker.exists() and servers.restarts()["server_0"] == 1
        assert client.stats["waited_for_restart"] >= 1


def test_attach_to_running_servers(tmp_path):
    with ServerManager(_spec(num_servers=2, use_router=False), tmp_path) as owned:
        attached = ServerManager.attach([u + "/" for u in owned.worker_urls]).start()
        assert attached.worker_urls == owned.worker_urls == attached.generate_urls()
        assert attached.router_url is None and not attached.owned
        assert attached.report_failure(owned.worker_urls[0], "x") is False
        attached.shutdown()  # stops nothing it does not own
        assert all(EngineAdmin(u).health() for u in owned.worker_urls)


def test_server_command_lines():
    cpu = build_server_command(_spec(python="py", server_module="sglang.launch_server"), 0, 30001, 30002, on_cpu=True)
    assert cpu[:11] == ["py", "-m", "sglang.launch_server", "--model-path", "fake-model", "--host", "127.0.0.1",
                        "--port", "30001", "--nccl-port", "30002"]
    assert cpu[11:] == list(CPU_SERVER_ARGS)
    # a flag given in extra_args replaces our default (and its value) instead of being repeated
    over = build_server_command(_spec(extra_args=["--max-total-tokens", "16384", "--log-level", "warning"]),
                                0, 1, 2, on_cpu=True)
    assert over.count("--max-total-tokens") == 1 and over[-4:] == ["--max-total-tokens", "16384", "--log-level",
                                                                   "warning"]
    gpu = build_server_command(_spec(tp_size=2, random_seed=7, deterministic=True), 1, 1, 2, on_cpu=False)
    assert gpu[11:] == ["--tp-size", "2", "--base-gpu-id", "2", "--enable-deterministic-inference",
                        "--random-seed", "8"]
    with pytest.raises(ValueError, match="needs a GPU"):
        build_server_command(_spec(deterministic=True), 0, 1, 2, on_cpu=True)
    with pytest.raises(ValueError, match="tp_size 2"):
        build_server_command(_spec(tp_size=2), 0, 1, 2, on_cpu=True)



def test_servers_start_after_the_trainers_gpus_and_must_fit_the_node():
    from dcpo_mcore.rollout.errors import RolloutError
    from dcpo_mcore.rollout.server import check_gpu_room

    spec = _spec(tp_size=2, num_servers=3, base_gpu_id=2)  # two trainer ranks on cuda:0,1
    firsts = [build_server_command(spec, i, 1, 2, on_cpu=False) for i in range(3)]
    assert [c[c.index("--base-gpu-id") + 1] for c in firsts] == ["2", "4", "6"]
    check_gpu_room(spec, 8)
    with pytest.raises(RolloutError, match=r"^3 SGLang server\(s\) x TP 2 after the trainer's 2 GPU\(s\) need 8 GPUs "
                                           r"on this node, which has 7"):
        check_gpu_room(spec, 7)

def test_cpu_launch_refuses_an_unpinned_sglang(tmp_path, monkeypatch):
    import dcpo_mcore.rollout.server as server

    monkeypatch.setattr(server, "installed_version", lambda python, dist: "0.4.0")
    with pytest.raises(RuntimeError, match="tied to sglang==0.5.23, but sglang==0.4.0 is installed"):
        ServerManager(_spec(server_module="sglang.launch_server"), tmp_path).start()


def test_port_allocator_hands_out_distinct_free_ports():
    alloc = PortAllocator(seed=0)
    ports = [alloc.pick() for _ in range(50)]
    assert len(set(ports)) == 50 and all(alloc.low <= p <= alloc.high for p in ports)
    alloc.release(ports[0])
    assert ports[0] not in alloc._reserved


def test_from_config_maps_the_rollout_section(tmp_path):
    from types import SimpleNamespace

    cfg = SimpleNamespace(server_urls=[], num_servers=3, use_router=False, server_tp_size=1,
                          sglang_extra_args=["--max-total-tokens", "8192"], request_timeout_s=300.0)
    m = ServerManager.from_config(cfg, "/models/x", tmp_path)
    assert m.owned and m.spec.num_servers == 3 and m.spec.router and m.spec.extra_args == ["--max-total-tokens", "8192"]
    attached = ServerManager.from_config(SimpleNamespace(server_urls=["h:1"]), "/m", tmp_path)
    assert not attached.owned and attached.worker_urls == ["http://h:1"]



def test_a_relative_local_model_path_is_made_absolute(tmp_path, monkeypatch):
    """Servers run in the run's log directory, where a relative path would point elsewhere (and SGLang
    would take it for a hub name)."""
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert LaunchSpec(model_path="model").model_path == str(tmp_path / "model")
    assert LaunchSpec(model_path="org/name").model_path == "org/name"  # not a local path: left alone


def test_trainer_and_server_must_share_one_nccl():
    from dcpo_mcore.rollout.errors import RolloutError
    from dcpo_mcore.rollout.server import check_same_nccl, nccl_version

    check_same_nccl("2.27.3", "2.27.3", "/v/bin/python")
    check_same_nccl(None, "2.27.3", "/v/bin/python")  # a CPU trainer forms a gloo group: nothing to compare
    with pytest.raises(RolloutError, match=r"^the trainer's torch has NCCL 2.27.3 but the SGLang interpreter "
                                           r"/v/bin/python has NCCL 2.28.9: "):
        check_same_nccl("2.27.3", "2.28.9", "/v/bin/python")
    # The real readings: torch's CPU build has no NCCL; PyPI's CUDA build (the 3.12 stack) reports its own
    # even on a machine without a GPU, read here through a subprocess as for a server's interpreter.
    import sys

    import torch

    if "+cpu" in torch.__version__:
        assert nccl_version(sys.executable) is None
    other = REPO / ".venv312" / "bin" / "python"
    if other.exists() and os.path.abspath(other) != os.path.abspath(sys.executable):
        assert re.fullmatch(r"2\.\d+\.\d+", nccl_version(str(other)) or ""), nccl_version(str(other))
