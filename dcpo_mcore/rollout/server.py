"""SGLang servers: launch N local ones (plus an sglang-router in front when N > 1), or attach to URLs.

    with ServerManager(LaunchSpec(model_path=hf_dir, num_servers=2), run_dir) as servers:
        client = RolloutClient(servers)               # /generate via the router (or the one server)
        for url in servers.worker_urls:               # weight-update endpoints: every worker directly,
            EngineAdmin(url).update_weight_version(VERSION)   # the router answers them with 404

What the manager guarantees for servers it launched:

* ports never collide (see ports.py); a port taken between pick and bind is detected in the log
  ("address already in use") and the server is relaunched on a new port;
* health waiting with a deadline: ``GET /health`` must answer 200 (SGLang answers 503 until its
  warm-up request is done); a process that exits fails fast with the tail of its log;
* logs in ``RUN_DIR/sglang/server_<i>.log`` and ``router.log``, appended across restarts;
* a watchdog thread restarts a server that dies (same port, same model path, health-checked again;
  at most ``max_restarts`` times), and logs ONE line saying which server died and why, then the last
  lines of its log (what it printed before dying);
* shutdown stops only the process groups we started (SIGTERM, SIGKILL after ``shutdown_grace_s``),
  also at interpreter exit.

On a machine without CUDA the server runs SGLang's CPU engine with the flags measured in
docs/platform.md [sglang-cpu] and the CPU compatibility shim (cpu_shim/) first on its PYTHONPATH.
"""
from __future__ import annotations

import atexit
import importlib.metadata
import logging
import os
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from ._http import request_json
from .cpu_shim import check_sglang_version, shim_env
from .endpoints import normalize_url
from .errors import RolloutError, ServerLaunchError, ServerUnreachable
from .ports import PORTS
from .process import ManagedProcess

__all__ = ["CPU_SERVER_ARGS", "LaunchSpec", "ServerManager", "build_server_command"]

log = logging.getLogger("dcpo_mcore.rollout")

SGLANG_SERVER_MODULE = "sglang.launch_server"
SGLANG_ROUTER_MODULE = "sglang_router.launch_router"
# Measured to work on CPU (docs/platform.md [sglang-cpu]). --dtype float32: otherwise a float32 checkpoint is
# served in fp16 and logprobs drift. --sleep-on-idle: an idle scheduler otherwise spins a core.
# --max-total-tokens fixes the KV pool; --mem-fraction-static then only sets how much of the host's free
# memory OTHER processes may take while this server loads its weights: SGLang charges every byte that
# disappears between its before- and after-load readings to the weights, and fails the start ("Loaded
# weights leave no GPU memory for the KV cache") when they exceed it. 0.05 (0.7 GB here) failed a CI run
# while another server started beside it; 0.5 tolerates half the free memory.
CPU_SERVER_ARGS: tuple[str, ...] = (
    "--device", "cpu", "--dtype", "float32", "--attention-backend", "torch_native",
    "--sampling-backend", "pytorch", "--disable-cuda-graph", "--max-total-tokens", "4096",
    "--mem-fraction-static", "0.5", "--grammar-backend", "none", "--sleep-on-idle",
)
# Router: notice a dead/restarted worker within seconds, not the default minute.
ROUTER_ARGS: tuple[str, ...] = ("--policy", "round_robin", "--health-check-interval-secs", "5",
                                "--cb-timeout-duration-secs", "10")


@dataclass
class LaunchSpec:
    """How to launch the servers (one object instead of a dozen keyword arguments)."""

    model_path: str
    num_servers: int = 1
    tp_size: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    use_router: bool | None = None  # None = a router exactly when num_servers > 1
    host: str = "127.0.0.1"
    extra_args: Sequence[str] = ()  # appended to every server; a flag here replaces our default
    router_extra_args: Sequence[str] = ()
    startup_timeout_s: float = 600.0
    shutdown_grace_s: float = 20.0
    max_restarts: int = 3
    watch_interval_s: float = 1.0
    random_seed: int | None = None  # server i gets --random-seed random_seed + i
    deterministic: bool = False  # --enable-deterministic-inference: honours per-request seeds; GPU only
    # First GPU (of this node) for the servers; server i takes base_gpu_id + i * tp_size onwards. The
    # trainer that launches its own servers passes its local rank count: NCCL refuses a weight-sync group
    # with two members on one GPU (docs/gpu.md [nccl-sync]).
    base_gpu_id: int = 0
    request_timeout_s: float = 1800.0  # router's per-request timeout
    python: str = field(default_factory=lambda: default_server_python())
    env: Mapping[str, str] = field(default_factory=dict)
    server_module: str = SGLANG_SERVER_MODULE  # tests substitute a fake server here
    router_module: str = SGLANG_ROUTER_MODULE

    def __post_init__(self):
        if self.num_servers < 1:
            raise ValueError(f"num_servers must be >= 1, got {self.num_servers}")
        if self.tp_size < 1:
            raise ValueError(f"tp_size must be >= 1, got {self.tp_size}")
        self.extra_args = [str(a) for a in self.extra_args]
        # The servers run in their own working directory (the run's log dir): a relative local path would
        # point elsewhere there, and a hub-style name is all SGLang would make of it.
        if Path(self.model_path).exists():
            self.model_path = str(Path(self.model_path).resolve())
        self.router_extra_args = [str(a) for a in self.router_extra_args]

    @property
    def router(self) -> bool:
        return self.num_servers > 1 if self.use_router is None else self.use_router


def default_server_python() -> str:
    """The interpreter SGLang servers and the router run under, first of: this one when it has sglang
    (the CPU setup of .venv installs it there); the GPU setup's separate ``.venv-sglang`` (full sglang
    pins its own CUDA torch); the repository's ``.venv`` when it has sglang (so the Python 3.12 stack,
    ``.venv312``, serves from the 3.11 venv: trainer and server share only HTTP and a
    torch.distributed group, docs/guide.md "Two supported stacks"). Else this one, whose missing
    sglang the launch then reports."""
    import importlib.util

    if importlib.util.find_spec("sglang") is not None:
        return sys.executable
    root = Path(__file__).resolve().parents[2]
    separate = root / ".venv-sglang" / "bin" / "python"
    if separate.exists():
        return str(separate)
    default_venv = root / ".venv"
    if (default_venv / "bin" / "python").exists() and any(default_venv.glob("lib/python3*/site-packages/sglang")):
        return str(default_venv / "bin" / "python")
    return sys.executable


def check_gpu_room(spec: LaunchSpec, device_count: int) -> None:
    """One line, before anything starts, when the servers' GPUs run past this node's."""
    need = spec.base_gpu_id + spec.num_servers * spec.tp_size
    if need > device_count:
        first = f"after the trainer's {spec.base_gpu_id} GPU(s) " if spec.base_gpu_id else ""
        raise RolloutError(f"{spec.num_servers} SGLang server(s) x TP {spec.tp_size} {first}need {need} GPUs on this "
                           f"node, which has {device_count}; start fewer servers, or run them elsewhere and "
                           "attach with rollout.server_urls")


def nccl_version(python: str) -> str | None:
    """The NCCL version torch reports in interpreter ``python`` ("2.27.3"), or None without CUDA NCCL."""
    code = ("import torch\ntry:\n    v = torch.cuda.nccl.version()\nexcept Exception:\n    v = None\n"
            "print('.'.join(map(str, v)) if isinstance(v, tuple) else (v or ''))")
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        import torch

        try:
            v = torch.cuda.nccl.version()
        except Exception:  # noqa: BLE001 - a CPU build has no NCCL
            return None
        return ".".join(map(str, v)) if isinstance(v, tuple) else (str(v) if v else None)
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    return out.stdout.strip() or None


def check_same_nccl(trainer: str | None, server: str | None, server_python: str) -> None:
    """NCCL refuses a communicator whose peers run different NCCL versions ("Mismatched NCCL version",
    patch level included), so a trainer and servers from two venvs whose torch builds ship different
    NCCLs could never form the weight-sync group (docs/gpu.md [nccl-sync]). Say so before starting."""
    if trainer and server and trainer != server:
        raise RolloutError(f"the trainer's torch has NCCL {trainer} but the SGLang interpreter {server_python} has "
                           f"NCCL {server}: NCCL cannot form the weight-sync group across versions; install the "
                           "same nvidia-nccl package in both venvs (or one venv for both)")


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch: no CUDA
        return False


def _merge_args(defaults: Sequence[str], extra: Sequence[str]) -> list[str]:
    """``defaults`` + ``extra``; a ``--flag`` given in ``extra`` drops that flag (and its values)
    from ``defaults``, so callers can override e.g. --max-total-tokens."""
    overridden = {a.split("=", 1)[0] for a in extra if a.startswith("--")}
    out, skip = [], False
    for a in defaults:
        if a.startswith("--"):
            skip = a.split("=", 1)[0] in overridden
        if not skip:
            out.append(a)
    return out + list(extra)


def build_server_command(spec: LaunchSpec, index: int, port: int, nccl_port: int, on_cpu: bool) -> list[str]:
    """The command line of server ``index``."""
    cmd = [spec.python, "-m", spec.server_module, "--model-path", str(spec.model_path),
           "--host", spec.host, "--port", str(port), "--nccl-port", str(nccl_port)]
    if on_cpu:
        if spec.deterministic:
            raise ValueError("deterministic=True needs a GPU: SGLang 0.5.23 allows "
                             "--enable-deterministic-inference only with the fa3/fa4/flashinfer/"
                             "triton attention backends, and the CPU engine uses torch_native")
        if spec.tp_size != 1:
            raise ValueError(f"server tp_size {spec.tp_size} needs GPUs; the CPU engine runs TP 1")
        defaults: list[str] = list(CPU_SERVER_ARGS)
    else:
        defaults = ["--tp-size", str(spec.tp_size), "--base-gpu-id", str(spec.base_gpu_id + index * spec.tp_size)]
        if spec.deterministic:
            defaults.append("--enable-deterministic-inference")
    if spec.random_seed is not None:
        defaults += ["--random-seed", str(spec.random_seed + index)]
    return cmd + _merge_args(defaults, spec.extra_args)


class _Slot:
    """One process we own: a server or the router."""

    def __init__(self, name: str, kind: str, index: int, port: int, log_path: Path):
        self.name, self.kind, self.index, self.port = name, kind, index, port
        self.aux_port: int | None = None  # server: --nccl-port; router: its Prometheus port
        self.proc = ManagedProcess(name, log_path)
        self.state = "new"  # new -> starting -> ready -> (dead -> restarting -> ready)* | failed | stopped
        self.restarts = 0
        self.lock = threading.Lock()
        self.host = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


_LIVE: "weakref.WeakSet[ServerManager]" = weakref.WeakSet()


@atexit.register
def _shutdown_all_at_exit() -> None:  # servers must not outlive the trainer
    for manager in list(_LIVE):
        try:
            manager.shutdown()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


class ServerManager:
    """Owns N launched SGLang servers (+ router), or wraps URLs of servers run elsewhere (attach).

    Implements the :class:`~dcpo_mcore.rollout.endpoints.Endpoints` protocol, so a RolloutClient
    built on it sends requests to :meth:`generate_urls` and has dead servers restarted.
    """

    def __init__(self, spec: LaunchSpec | None, run_dir: str | os.PathLike | None = None, *,
                 attach_urls: Sequence[str] = ()):
        self.spec = spec
        self.owned = spec is not None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.log_dir = None if self.run_dir is None else self.run_dir / "sglang"
        self._workers: list[_Slot] = []
        self._router: _Slot | None = None
        self._attached_workers = [normalize_url(u) for u in attach_urls]
        self._attached_router: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._restarters: list[threading.Thread] = []
        self._on_cpu = False
        self._started = False
        if self.owned and self.run_dir is None:
            raise ValueError("run_dir is required to launch servers (logs go to RUN_DIR/sglang/)")

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def attach(cls, urls: Sequence[str]) -> "ServerManager":
        """Servers (or ONE sglang-router) run by someone else. A router is recognised by its
        ``/workers`` answer, and its workers then receive the weight-update calls."""
        if not urls:
            raise ValueError("attach() needs at least one URL")
        return cls(None, attach_urls=urls)

    @classmethod
    def from_config(cls, rollout_cfg: Any, model_path: str, run_dir: str | os.PathLike, **spec_overrides: Any):
        """From the ``rollout`` config section: attach to ``server_urls``, or launch ``num_servers``."""
        if rollout_cfg.server_urls:
            return cls.attach(rollout_cfg.server_urls)
        spec = LaunchSpec(model_path=str(model_path), num_servers=rollout_cfg.num_servers,
                          tp_size=rollout_cfg.server_tp_size,
                          # the config has no "auto": False there means "default", i.e. a router iff N > 1
                          use_router=True if rollout_cfg.use_router else None,
                          extra_args=list(rollout_cfg.sglang_extra_args),
                          request_timeout_s=max(rollout_cfg.request_timeout_s, 60.0), **spec_overrides)
        return cls(spec, run_dir)

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> "ServerManager":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ start
    def start(self) -> "ServerManager":
        """Launch everything and wait until healthy (owned), or check the URLs answer (attached)."""
        if self._started:
            return self
        if self._stop.is_set():
            raise RolloutError("this ServerManager was shut down; create a new one")
        if not self.owned:
            self._start_attached()
            self._started = True
            return self
        spec = self.spec
        self._on_cpu = spec.device == "cpu" or (spec.device == "auto" and not _cuda_available())
        if self._on_cpu and spec.server_module == SGLANG_SERVER_MODULE:
            check_sglang_version(installed_version(spec.python, "sglang"))
        if not self._on_cpu:
            import torch

            check_gpu_room(spec, torch.cuda.device_count())
            check_same_nccl(nccl_version(sys.executable), nccl_version(spec.python), spec.python)
        _LIVE.add(self)
        self._started = True
        try:
            self._workers = [_Slot(f"server_{i}", "server", i, PORTS.pick(spec.host),
                                   self.log_dir / f"server_{i}.log") for i in range(spec.num_servers)]
            for slot in self._workers:
                self._launch(slot)
            self._await_ready(self._workers, fresh=True)
            if spec.router:
                self._router = _Slot("router", "router", 0, PORTS.pick(spec.host), self.log_dir / "router.log")
                self._launch(self._router)
                self._await_ready([self._router], fresh=True)
        except BaseException:
            self.shutdown()
            raise
        log.info("SGLang ready: %s%s", ", ".join(f"{s.name}={s.url} (pid {s.proc.pid})" for s in self._workers),
                 f"; router={self._router.url}" if self._router else "")
        self._watchdog = threading.Thread(target=self._watch, name="sglang-watchdog", daemon=True)
        self._watchdog.start()
        return self

    def _start_attached(self) -> None:
        urls = self._attached_workers
        for url in urls:  # one-line error for a wrong URL, before any rollout starts
            ans = request_json("GET", url, "/health", timeout=30)
            if not ans.ok:
                raise ServerUnreachable(url, f"GET /health answered HTTP {ans.status}")
        if len(urls) == 1:
            ans = request_json("GET", urls[0], "/workers", timeout=30)
            workers = ans.body.get("workers") if ans.ok and isinstance(ans.body, dict) else None
            if isinstance(workers, list) and workers:
                self._attached_router = urls[0]
                self._attached_workers = [normalize_url(w["url"]) for w in workers if "url" in w]

    def _server_env(self) -> dict[str, str]:
        env = {**os.environ, **self.spec.env}
        if Path(self.spec.model_path).is_dir():
            env.setdefault("HF_HUB_OFFLINE", "1")  # a local model: never reach for the hub
        if self._on_cpu:
            env["SGLANG_USE_CPU_ENGINE"] = "1"
            # torch's CPU allocator asks for transparent huge pages (madvise) for blocks >= 2 MiB: the
            # server receives every weight-sync bucket into a fresh buffer, and first-touch page faults
            # on 4 KiB pages made that 3-4x slower (performance.md "Weight sync"). Read once, at the
            # first allocation, so it must be in the environment the server starts with. An explicit
            # value (the caller's environment or LaunchSpec.env, e.g. "0") wins.
            env.setdefault("THP_MEM_ALLOC_ENABLE", "1")
            env = shim_env(env)
        return env

    def _launch(self, slot: _Slot) -> None:
        spec = self.spec
        slot.host = spec.host
        if slot.aux_port is not None:
            PORTS.release(slot.aux_port)
        slot.aux_port = PORTS.pick(spec.host)
        if slot.kind == "server":
            cmd = build_server_command(spec, slot.index, slot.port, slot.aux_port, self._on_cpu)
            env = self._server_env()
        else:
            cmd = [spec.python, "-m", spec.router_module, "--host", spec.host, "--port", str(slot.port),
                   "--worker-urls", *[w.url for w in self._workers],
                   "--request-timeout-secs", str(int(spec.request_timeout_s)),
                   # its metrics endpoint otherwise binds 0.0.0.0:29000: a second router would collide
                   "--prometheus-host", spec.host, "--prometheus-port", str(slot.aux_port),
                   *_merge_args(ROUTER_ARGS, spec.router_extra_args)]
            env = {**os.environ, **spec.env}
        slot.state = "starting"
        slot.proc.launch(cmd, env, cwd=self.run_dir)

    def _probe(self, slot: _Slot) -> bool:
        """Healthy, and the answer comes from OUR process (not one that squats the port)."""
        try:
            if slot.kind == "server":
                ok = request_json("GET", slot.url, "/health", timeout=5).status == 200
                return ok and slot.proc.listens_on(slot.port) is not False
            ans = request_json("GET", slot.url, "/workers", timeout=5)  # router: every worker healthy
            if not (ans.ok and isinstance(ans.body, dict)):
                return False
            healthy = {normalize_url(w.get("url", "")) for w in ans.body.get("workers", []) if w.get("is_healthy")}
            return healthy >= {w.url for w in self._workers} and slot.proc.listens_on(slot.port) is not False
        except ServerUnreachable:
            return False

    def _await_ready(self, slots: Sequence[_Slot], *, fresh: bool) -> None:
        """Wait until every slot answers healthy. Port taken -> relaunch (new port if ``fresh``)."""
        deadline = time.monotonic() + self.spec.startup_timeout_s
        pending = list(slots)
        port_retries = {id(s): 0 for s in slots}
        while pending:
            if self._stop.is_set() and not fresh:
                raise RolloutError("shutting down")
            for slot in list(pending):
                if slot.proc.port_conflict():
                    port_retries[id(slot)] += 1
                    if port_retries[id(slot)] > 3:
                        raise ServerLaunchError(f"SGLang {slot.name}: port {slot.port} stayed in use over 3 launches",
                                                slot.proc.log_tail(), str(slot.proc.log_path))
                    slot.proc.stop(self.spec.shutdown_grace_s)
                    old = slot.port
                    if fresh:
                        PORTS.release(old)
                        slot.port = PORTS.pick(self.spec.host)
                    else:
                        time.sleep(2.0)
                    log.warning("SGLang %s: port %d was taken before the server could bind it; relaunching on %d",
                                slot.name, old, slot.port)
                    self._launch(slot)
                elif not slot.proc.alive():
                    raise ServerLaunchError(
                        f"SGLang {slot.name} ({slot.url}) exited with code {slot.proc.returncode} before it "
                        f"became healthy", slot.proc.log_tail(), str(slot.proc.log_path))
                elif self._probe(slot):
                    slot.state = "ready"
                    pending.remove(slot)
            if pending and time.monotonic() > deadline:
                slot = pending[0]
                raise ServerLaunchError(
                    f"SGLang {slot.name} ({slot.url}) was not healthy {self.spec.startup_timeout_s:.0f} s after "
                    f"launch", slot.proc.log_tail(), str(slot.proc.log_path))
            if pending:
                time.sleep(0.5)

    # ------------------------------------------------------------------ failure handling
    def _watch(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.spec.watch_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            for slot in self._slots():
                if slot.state == "ready" and not slot.proc.alive():
                    # one thread per dead process, so two dead servers restart in parallel
                    t = threading.Thread(target=self._recover, args=(slot, f"process exited with code "
                                         f"{slot.proc.returncode}"), name=f"sglang-restart-{slot.name}", daemon=True)
                    with slot.lock:
                        if slot.state != "ready":
                            continue
                        slot.state = "dead"
                    self._restarters.append(t)
                    t.start()

    def _recover(self, slot: _Slot, cause: str) -> None:
        with slot.lock:
            if slot.state != "dead" or self._stop.is_set():
                return
            if slot.restarts >= self.spec.max_restarts:
                slot.state = "failed"
                log.error("SGLang %s (%s, pid %s) died: %s; not restarting (max_restarts=%d reached; log: %s)",
                          slot.name, slot.url, slot.proc.pid, cause, self.spec.max_restarts, slot.proc.log_path)
                _log_death_tail(slot)
                return
            slot.state = "restarting"
            log.warning("SGLang %s (%s, pid %s) died: %s; restarting it on the same port (log: %s)",
                        slot.name, slot.url, slot.proc.pid, cause, slot.proc.log_path)
        _log_death_tail(slot)
        t0 = time.monotonic()
        try:
            slot.proc.stop(self.spec.shutdown_grace_s)  # whatever is left of the old process group
            self._launch(slot)
            slot.state = "restarting"
            self._await_ready([slot], fresh=False)
            slot.restarts += 1
            log.warning("SGLang %s restarted at %s (pid %s) in %.0f s", slot.name, slot.url, slot.proc.pid,
                        time.monotonic() - t0)
        except Exception as exc:  # noqa: BLE001 - report in one line, keep the others running
            slot.state = "failed"
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("SGLang %s could not be restarted: %s", slot.name, first)

    def report_failure(self, url: str, cause: str) -> bool:
        """A client could not reach ``url``. True if it is ours and being restarted (wait for it)."""
        slot = self._slot_for(url)
        if slot is None:
            return False
        if slot.state in ("dead", "restarting", "starting"):
            return True
        if slot.state == "ready" and not slot.proc.alive():
            self._wake.set()  # the watchdog restarts it
            return True
        return False

    def restart(self, index: int) -> None:
        """Restart worker ``index`` now (same port, same model), e.g. after a failed weight sync."""
        slot = self._owned_slot(index)
        with slot.lock:
            if slot.state != "ready":
                raise RolloutError(f"SGLang {slot.name} is {slot.state}; cannot restart it now")
            slot.state = "restarting"
        try:
            slot.proc.stop(self.spec.shutdown_grace_s)
            self._launch(slot)
            self._await_ready([slot], fresh=False)
            slot.restarts += 1
        except BaseException:
            slot.state = "failed"
            raise

    # ------------------------------------------------------------------ Endpoints protocol + views
    def generate_urls(self) -> list[str]:
        if self._router is not None:
            return [self._router.url]
        if self._attached_router is not None:
            return [self._attached_router]
        return self.worker_urls

    def is_ready(self, url: str) -> bool:
        slot = self._slot_for(url)
        return True if slot is None else (slot.state == "ready" and slot.proc.alive())

    def is_failed(self, url: str) -> bool:
        slot = self._slot_for(url)
        return slot is not None and slot.state in ("failed", "stopped")

    def endpoints(self, workers: Sequence[int] | None = None) -> "WorkerView":
        """Endpoints that send /generate to workers directly (bypassing the router), optionally
        only to the workers with these indices; failures still restart the servers."""
        urls = self.worker_urls
        return WorkerView(self, [urls[i] for i in (range(len(urls)) if workers is None else workers)])

    # ------------------------------------------------------------------ introspection
    @property
    def worker_urls(self) -> list[str]:
        """Every SGLang worker: weight-update endpoints must be called on each of these."""
        return [s.url for s in self._workers] if self.owned else list(self._attached_workers)

    @property
    def router_url(self) -> str | None:
        return self._router.url if self._router else self._attached_router

    @property
    def on_cpu(self) -> bool:
        return self._on_cpu

    def pids(self) -> dict[str, int | None]:
        return {s.name: s.proc.pid for s in self._slots()}

    def restarts(self) -> dict[str, int]:
        return {s.name: s.restarts for s in self._slots()}

    def states(self) -> dict[str, str]:
        return {s.name: s.state for s in self._slots()}

    def log_path(self, index: int | None = None) -> Path:
        """Log of worker ``index``, or of the router when index is None."""
        return (self._router if index is None else self._owned_slot(index)).proc.log_path

    def server_log(self, url: str, lines: int = 20) -> tuple[Path, str] | None:
        """(log path, its last ``lines`` lines) of the server we launched at ``url`` -- the file's last
        lines, so a crash is still there after a restart appended a new launch; None for a URL that is not
        one of ours (attached servers, a foreign URL)."""
        slot = self._slot_for(url) if self.owned else None
        return None if slot is None else (slot.proc.log_path, slot.proc.log_tail(lines, since_launch=False))

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        """Block until no slot is starting/restarting; RolloutError if one failed or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.states()
            if any(v == "failed" for v in states.values()):
                raise RolloutError(f"SGLang server(s) failed: {states}")
            if all(v == "ready" for v in states.values()) and all(s.proc.alive() for s in self._slots()):
                return
            if time.monotonic() > deadline:
                raise RolloutError(f"SGLang servers not ready after {timeout_s:.0f} s: {states}")
            time.sleep(0.25)

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Stop the router and the servers we started (only those; idempotent)."""
        self._stop.set()
        self._wake.set()
        grace = self.spec.shutdown_grace_s if self.spec else 5.0
        for t in ([self._watchdog] if self._watchdog else []) + self._restarters:
            if t is not threading.current_thread():  # restarts see _stop and give up within a grace period
                t.join(timeout=grace + 30)
        slots = ([self._router] if self._router else []) + list(self._workers)
        threads = [threading.Thread(target=s.proc.stop, args=(self.spec.shutdown_grace_s,), daemon=True)
                   for s in slots if s.state != "stopped"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in slots:
            if s.state != "stopped":
                s.state = "stopped"
                PORTS.release(s.port)
                if s.aux_port is not None:
                    PORTS.release(s.aux_port)
        _LIVE.discard(self)

    # ------------------------------------------------------------------ internals
    def _slots(self) -> list[_Slot]:
        return list(self._workers) + ([self._router] if self._router else [])

    def _slot_for(self, url: str) -> _Slot | None:
        url = normalize_url(url)
        return next((s for s in self._slots() if s.url == url), None)

    def _owned_slot(self, index: int) -> _Slot:
        if not self.owned:
            raise RolloutError("these SGLang servers were attached, not launched here; they cannot be restarted")
        return self._workers[index]

    def __repr__(self) -> str:
        if not self.owned:
            return f"ServerManager(attached workers={self.worker_urls}, router={self.router_url})"
        return f"ServerManager({self.states()}, workers={self.worker_urls}, router={self.router_url})"


class WorkerView:
    """Endpoints over a subset of a manager's workers, addressed directly (no router)."""

    def __init__(self, manager: ServerManager, urls: Sequence[str]):
        self.manager, self._urls = manager, list(urls)

    def generate_urls(self) -> list[str]:
        return list(self._urls)

    def is_ready(self, url: str) -> bool:
        return self.manager.is_ready(url)

    def report_failure(self, url: str, cause: str) -> bool:
        return self.manager.report_failure(url, cause)

    def is_failed(self, url: str) -> bool:
        return self.manager.is_failed(url)


def _log_death_tail(slot: _Slot, lines: int = 25) -> None:
    """After the one line saying that a server died: what it printed last (its traceback, an OOM
    message...), read before the relaunch appends to the log. A peer of a crashed server only sees gloo's
    "Connection closed by peer", which names no cause."""
    tail = slot.proc.log_tail(lines)
    if tail.strip():
        log.warning("SGLang %s: what it printed last (%s, %d lines):\n%s", slot.name, slot.proc.log_path, lines,
                    tail)


def installed_version(python: str, dist: str) -> str | None:
    """Version of ``dist`` in the interpreter ``python`` (this one without a subprocess)."""
    if os.path.abspath(python) == os.path.abspath(sys.executable):  # not realpath: venvs symlink
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None
    code = ("import importlib.metadata as m\ntry: print(m.version(%r))\nexcept m.PackageNotFoundError: print('')" % dist)
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return out.stdout.strip() or None
