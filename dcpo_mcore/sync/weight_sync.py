"""Push the trainer's weights into every SGLang worker by broadcast (docs/platform.md [sglang-weight-update]).

Per :meth:`WeightSync.push` (a collective over all trainer ranks):

1. rank 0 makes sure every worker is up and in the weight-update group (formed once; re-formed after
   a server restart or a failure), then calls ``/begin_weight_update`` on each. Liveness and the
   workers' weight versions come from one parallel ``GET /model_info`` (:mod:`.liveness`; the 1 s
   ``/health`` only as a fallback);
2. all ranks stream the model to rank 0 (:func:`~dcpo_mcore.engine.hf_export.stream_hf_tensors`: TP
   shards and PP stages gathered, converted to HF names by the shared mapping);
3. rank 0 packs the HF tensors into flattened buckets and a sender thread broadcasts bucket k while
   the gather of bucket k+1 goes on; each bucket is one ``/update_weights_from_distributed`` per
   worker (HTTP in threads, the broadcast in order). The export makes no copy the packer would make
   again (``copy=False``); each tensor is ``copy_``-ed once into a reused bucket buffer (a pool of
   ``pool_buffers``: one on the wire, one queued, one filling; a buffer is refilled only after its
   broadcast completed);
4. ``/end_weight_update``, then ``/update_weight_version`` on each worker.

A failed or partial update is never ignored (SGLang keeps half-updated weights): the attempt is
repeated as a whole with a re-formed group, the last attempt after restarting the failing server when
we own it; after ``max_attempts`` every rank raises :class:`SyncError`. :meth:`verify` compares the
trainer's and each worker's log-probs on fixed sequences and raises above a threshold.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

from dcpo_mcore.engine import collectives
from dcpo_mcore.engine.batching import PolicySample
from dcpo_mcore.engine.hf_export import stream_hf_tensors
from dcpo_mcore.engine.hf_mapping import expected_hf_shapes
from dcpo_mcore.errors import one_line
from dcpo_mcore.rollout.admin import EngineAdmin
from dcpo_mcore.rollout.errors import RequestRejected
from dcpo_mcore.rollout.ports import PORTS
from dcpo_mcore.rollout.wire import InitWeightsUpdateGroupRequest

from .buckets import BucketPacker, BufferPool
from .errors import SyncError
from .group import create_trainer_group, destroy_trainer_group, reachable_address
from .liveness import probe_workers, wait_workers_ready
from .sender import BucketSender, SendFailure
from .verify import default_threshold, max_abs_diff, server_prompt_logprobs, verification_prompts

__all__ = ["SyncSettings", "WeightSync", "settings_from_config"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncSettings:
    bucket_bytes: int = 512 << 20  # flattened bucket size (issue default 512 MiB)
    backend: str = "auto"  # auto: nccl when the trainer is on GPU, else gloo (ALWAYS sent explicitly)
    master_address: str | None = None  # None: 127.0.0.1 for local servers, else the route's address
    group_name: str = "dcpo_weight_sync"
    timeout_s: float = 600.0  # group formation, one bucket's broadcast, one HTTP call
    reject_grace_s: float = 5.0  # a server rejected a bucket but the broadcast still waits: give up after this
    max_attempts: int = 3  # 1 + re-push with a re-formed group + re-push after restarting the server
    send_dtype: torch.dtype | None = None  # cast on the wire (e.g. bf16 to a bf16 server); None: as trained
    pool_buffers: int = 3  # bucket buffers reused by the packer: on the wire, queued, filling (>= 1)
    keep_buffers: bool | None = None  # keep them between pushes; None: on CPU (gloo) yes, on GPU (nccl) no
    verify_every: int = 1  # verify log-probs every k pushes; 0 = never
    verify_threshold: float | None = None  # max |trainer - server| log-prob; None: default_threshold()
    verify_num_prompts: int = 2
    verify_prompt_len: int = 32
    verify_seed: int = 1234
    # Generation in flight during a push (rollout.push_mode): None = nothing is in flight (the trainer waited
    # for it: on-policy, or push_mode=wait); else SGLang's /pause_generation mode before the update and
    # /continue_generation after it (docs/algorithm.md [async-rollout]).
    pause_mode: str | None = None


def settings_from_config(sync_cfg: Any) -> SyncSettings:
    """SyncSettings from the config's ``sync`` section (dcpo_mcore.config.sections.SyncConfig)."""
    return SyncSettings(bucket_bytes=sync_cfg.bucket_mb << 20, backend=sync_cfg.backend,
                        master_address=sync_cfg.master_address, timeout_s=sync_cfg.timeout_s,
                        max_attempts=sync_cfg.max_attempts, verify_every=sync_cfg.verify_every,
                        verify_threshold=sync_cfg.verify_threshold)


class WeightSync:
    """The trainer's link to the rollout engines' weights. Build it on EVERY trainer rank; ``servers``
    (a ServerManager, or worker URLs of attached servers) is only used on global rank 0."""

    def __init__(self, engine: Any, servers: Any = None, settings: SyncSettings = SyncSettings()):
        self.engine, self.settings = engine, settings
        self.rank0 = dist.get_rank() == 0
        self.manager = servers if hasattr(servers, "worker_urls") else None
        urls = list(servers.worker_urls) if self.manager is not None else list(servers or [])
        if self.rank0 and not urls:
            raise SyncError("weight sync needs at least one SGLang worker URL on trainer rank 0")
        self.admins = [EngineAdmin(u, timeout_s=settings.timeout_s) for u in urls] if self.rank0 else []
        backend = settings.backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        self.backend = backend
        if self.rank0 and backend == "gloo":
            _warn_without_thp()
        self.pushes = 0
        self.version: str | None = None
        self._pg = None
        self._group_name = None
        self._generation = 0
        self._nonce = uuid.uuid4().hex[:8]
        self._restarts_seen: dict[str, int] | None = None
        self._tp_sizes: list[int] | None = None
        self._pool: BufferPool | None = None
        self._pack_error: str | None = None  # rank 0: why packing the current attempt's buckets failed

    # ------------------------------------------------------------------ public
    def push(self, version: str) -> dict[str, float]:
        """Sync every worker to the trainer's current weights, labelled ``version``. Collective."""
        t0 = time.perf_counter()
        paused = self._pause_generation()
        try:
            metrics, attempt = self._push_attempts(version)
        finally:
            if paused:
                self._continue_generation()
        metrics = {**metrics, "sync/seconds": time.perf_counter() - t0, "sync/attempts": float(attempt)}
        metrics["sync/gbps"] = 8e-9 * metrics["sync/bytes"] / max(metrics["sync/seconds"], 1e-9)
        self.version, self.pushes = version, self.pushes + 1
        every = self.settings.verify_every
        if every and self.pushes % every == 0:
            metrics["sync/logprob_max_abs_diff"] = self.verify()
        return metrics

    def _push_attempts(self, version: str) -> tuple[dict[str, float], int]:
        failure: SendFailure | None = None
        for attempt in range(1, self.settings.max_attempts + 1):
            status = self._bcast(self._prepare(attempt, failure) if self.rank0 else None)
            if status[0] == "fatal":
                raise SyncError(status[1])
            timings: dict[str, float] = {}
            sender = self._stream(timings)
            status = self._bcast(self._complete(sender, version, timings) if self.rank0 else None)
            if status[0] == "ok":
                break
            failure = status[2] if self.rank0 else None
            if status[0] == "fatal" or attempt == self.settings.max_attempts:
                raise SyncError(f"weight sync failed after {attempt} attempt(s): {status[1]}; the server keeps "
                                "partly updated weights, so the run stops (restart the server or the run)")
            if self.rank0:
                log.warning("weight sync attempt %d failed: %s; re-pushing everything", attempt, status[1])
        if not self._keep_buffers():
            self._pool = None  # its buffers go back when the last bucket does (pool-free until the next push)
        return status[1], attempt

    def _pause_generation(self) -> bool:
        """Rank 0, with a pause mode: pause every worker's generation in flight. A worker that does not
        answer is not generating (it is down; the attempt below waits for it); True if any was paused."""
        mode = self.settings.pause_mode
        if not (self.rank0 and mode):
            return False
        return self._on_every_worker(lambda a: a.pause_generation(mode), "pause generation on %s before the push")

    def _continue_generation(self) -> None:
        # before verify(), whose /generate calls a paused worker would hold; one that died since restarts unpaused
        self._on_every_worker(lambda a: a.continue_generation(), "resume generation on %s after the push")

    def _on_every_worker(self, call, doing: str) -> bool:
        """``call(admin)`` on every worker; a failure is a warning (liveness is _prepare's job). True if any
        succeeded."""
        done = False
        for a in self.admins:
            try:
                call(a)
                done = True
            except Exception as exc:  # noqa: BLE001 - say it and go on
                log.warning("could not " + doing + ": %s", a.url, one_line(exc, 300))
        return done

    def verify(self) -> float:
        """Max |trainer - server| prompt log-prob over the fixed sequences and all workers. Collective.
        Raises SyncError on every rank above the threshold."""
        s = self.settings
        prompts = verification_prompts(self.engine.arch.vocab_size, s.verify_num_prompts, s.verify_prompt_len,
                                       s.verify_seed)
        samples = [PolicySample(prompt_ids=p[:1], response_ids=p[1:]) for p in prompts]
        # A pass needs a sample per DP rank: repeat the fixed sequences to fill them (DP8 with 2 prompts
        # would otherwise refuse the batch) and compare the first copy with the servers.
        copies = -(-self.engine.data_parallel_size // len(samples))
        ours = self.engine.compute_logprobs(samples * copies, temperature=1.0).logprobs[:len(samples)]
        result = None
        if self.rank0:
            try:
                diffs = {a.url: max_abs_diff(ours, [server_prompt_logprobs(a.url, p) for p in prompts])
                         for a in self.admins}
                result = ("ok", diffs)
            except Exception as exc:  # noqa: BLE001 - unreachable server etc.: one line on every rank
                result = ("fatal", f"log-prob verification could not query the servers: {one_line(exc, 400)}")
        status = self._bcast(result)
        if status[0] == "fatal":
            raise SyncError(status[1])
        diffs = status[1]
        worst = max(diffs.values())
        limit = s.verify_threshold or default_threshold(self.engine.settings.precision.params_dtype,
                                                        None if s.send_dtype is None else str(s.send_dtype))
        if worst > limit:
            bad = max(diffs, key=diffs.get)
            raise SyncError(f"after weight sync {self.version!r}, {bad} differs from the trainer by {worst:.3g} in "
                            f"log-prob (limit {limit:g}): the server does not run the trained weights; stopping "
                            "instead of training against a wrong engine")
        return worst

    def stale_workers(self) -> list[str]:
        """Rank 0: workers whose reported weight_version is not the last pushed one (e.g. restarted).
        An unreachable worker is stale too. All workers are asked at once."""
        return [p.url for p in probe_workers(self.admins, fallback=False) if p.version != self.version]

    def close(self) -> None:
        if self.rank0 and self._pg is not None:
            for a in self.admins:
                _quietly(a.destroy_weights_update_group, _destroy_req(self._group_name))
            destroy_trainer_group(self._pg)
        self._pg = None
        self._pool = None

    # ------------------------------------------------------------------ rank 0: group and session
    def _prepare(self, attempt: int, failure: SendFailure | None) -> tuple:
        try:
            probes = self._wait_workers_ready()
            if failure is not None and attempt == self.settings.max_attempts and failure.url:
                self._restart(failure.url)
            restarts = self.manager.restarts() if self.manager is not None else None
            # A worker that lost its weights (restarted by anyone) reports another weight_version; it
            # also left the old group, which must therefore be formed again. (A worker that only
            # answered /health has an unknown version: stale, to be safe.)
            stale = self.version is not None and any(p.version != self.version for p in probes)
            if self._pg is None or failure is not None or stale or restarts != self._restarts_seen:
                self._form_group(poisoned=failure is not None and failure.poisoned)
                self._restarts_seen = restarts
            for a in self.admins:
                _begin(a)
            return ("go",)
        except Exception as exc:  # noqa: BLE001 - any failure here is fatal for the run: say it in one line
            return ("fatal", self._point_at_logs(f"weight sync could not start: {one_line(exc, 400)}",
                                                 getattr(exc, "url", None)))

    def _form_group(self, poisoned: bool) -> None:
        if self._pg is not None:
            for a in self.admins:  # best effort: the server may be the one that was restarted
                _quietly(a.end_weight_update)
                _quietly(a.destroy_weights_update_group, _destroy_req(self._group_name))
            if not poisoned:
                destroy_trainer_group(self._pg)
            self._pg = None
        self._generation += 1
        # Unique per trainer process too: servers outlive trainers (attach, resume) and keep old groups.
        name = f"{self.settings.group_name}-{self._nonce}-{self._generation}"
        if self._tp_sizes is None:
            self._tp_sizes = [int(a.server_info().get("tp_size", 1)) for a in self.admins]
        offsets = [1 + sum(self._tp_sizes[:i]) for i in range(len(self.admins))]
        world = 1 + sum(self._tp_sizes)
        address = self.settings.master_address or reachable_address([a.url for a in self.admins])
        port = PORTS.pick("0.0.0.0")
        reqs = [InitWeightsUpdateGroupRequest(master_address=address, master_port=port, rank_offset=o,
                                              world_size=world, group_name=name, backend=self.backend)
                for o in offsets]
        self._pg = _rendezvous(self.admins, reqs, lambda: create_trainer_group(
            address, port, world, self.backend, name, self.settings.timeout_s), self.settings.timeout_s)
        self._group_name = name
        log.info("weight-update group %s formed: trainer + %d worker rank(s) over %s at %s:%d",
                 name, world - 1, self.backend, address, port)

    def _point_at_logs(self, message: str, url: str | None) -> str:
        """Rank 0, after a failed attempt, for the servers our manager launched (``url``'s, or all when
        the failure names none, e.g. a gloo error): their last log lines as a warning -- on this side a
        crashed server only shows as gloo's "Connection closed by peer" -- and their log paths appended to
        the one-line ``message``."""
        server_log = getattr(self.manager, "server_log", None)
        if server_log is None:
            return message
        paths = []
        for u in [url] if url else [a.url for a in self.admins]:
            found = server_log(u)
            if found is not None:
                path, tail = found
                log.warning("weight sync failed; the last lines of SGLang worker %s's log %s:\n%s", u, path, tail)
                paths.append(str(path))
        return f"{message} (server log: {', '.join(paths)})" if paths else message

    def _wait_workers_ready(self) -> list:
        """Wait (up to timeout_s) until every worker is alive (:func:`.liveness.wait_workers_ready`: one
        parallel ``/model_info`` per round, ``/health`` only as the fallback); their probes, with each
        worker's weight_version. A dead server we own is being restarted by the manager's watchdog; an
        attached one may be restarted by whoever runs it."""
        return wait_workers_ready(self.admins, self.manager, self.settings.timeout_s)

    def _restart(self, url: str) -> None:
        if self.manager is None or not self.manager.owned:
            return  # attached servers: the last attempt is one more full re-push
        index = self.manager.worker_urls.index(url)
        log.warning("restarting SGLang worker %s before the last weight-sync attempt", url)
        self.manager.restart(index)

    # ------------------------------------------------------------------ all ranks: the transfer
    def _stream(self, timings: dict[str, float]) -> BucketSender | None:
        sender = packer = None
        if self.rank0:
            sender = BucketSender(self._pg, self.admins, self._group_name, self.settings.timeout_s,
                                  self.settings.reject_grace_s, expected_hf_shapes(self.engine.arch))
            device = "cuda" if self.backend == "nccl" else "cpu"
            if self._pool is None:
                self._pool = BufferPool(self.settings.bucket_bytes, max(1, self.settings.pool_buffers), device)
            packer = BucketPacker(self.settings.bucket_bytes, sender.submit, self.settings.send_dtype, device,
                                  pool=self._pool)
            timings["pool_wait0"] = self._pool.wait_s
        self._pack_error = None
        sink = None
        if packer is not None:
            def sink(name: str, tensor: torch.Tensor) -> None:
                # Rank 0's packing must not raise out of the gather: the other ranks are blocked sending
                # their shards to rank 0 and would only die with gloo's "Connection closed by peer"
                # (which names no cause) once rank 0 is gone. Keep receiving, drop the rest, and report
                # the cause to every rank at the end of the attempt (_complete).
                if self._pack_error is None:
                    try:
                        packer.add(name, tensor)
                    except Exception as exc:  # noqa: BLE001 - reported on every rank by _complete
                        self._pack_error = (f"packing {name} on trainer rank 0 failed: "
                                            f"{one_line(exc, 400, typed=True)}")
        t0 = time.perf_counter()
        try:
            # copy=False: the packer copy_s every tensor into its bucket before add() returns.
            stream_hf_tensors(self.engine.chunks, self.engine.arch, self.engine.uses_te, sink, timings=timings,
                              on_cpu=self.backend != "nccl", copy=False)
            if packer is not None and self._pack_error is None:
                try:
                    packer.flush()
                except Exception as exc:  # noqa: BLE001 - as in sink()
                    self._pack_error = (f"packing the last bucket on trainer rank 0 failed: "
                                        f"{one_line(exc, 400, typed=True)}")
        finally:
            if packer is not None:
                packer.abandon()  # after an error: the half-filled buffer (never sent) goes back
                timings["pool_wait"] = self._pool.wait_s - timings.pop("pool_wait0")
        timings["stream"] = time.perf_counter() - t0
        return sender

    def _keep_buffers(self) -> bool:
        keep = self.settings.keep_buffers
        return self.backend != "nccl" if keep is None else keep

    def _complete(self, sender: BucketSender, version: str, timings: dict[str, float]) -> tuple:
        t0 = time.perf_counter()
        failure = sender.finish()
        tail = time.perf_counter() - t0
        if self._pack_error is not None:  # our own bug, not the servers': a re-push would not help
            return ("fatal", self._pack_error, None)
        if failure is None:
            try:
                for a in self.admins:
                    a.end_weight_update()
                for a in self.admins:
                    a.update_weight_version(version, abort_all_requests=False)
            except Exception as exc:  # noqa: BLE001
                failure = SendFailure(f"closing the update failed: {one_line(exc, 400)}", getattr(exc, "url", None))
        if failure is not None:
            return ("retry", self._point_at_logs(failure.message, failure.url), failure)
        tm = sender.timing
        gather, sink = timings.get("gather", 0.0), timings.get("sink", 0.0)
        return ("ok", {
            "sync/bytes": float(tm.bytes), "sync/buckets": float(tm.buckets),
            "sync/gather_seconds": gather,
            "sync/convert_seconds": max(timings["stream"] - gather - sink, 0.0),
            "sync/pack_seconds": max(sink - tm.wait_s - timings.get("pool_wait", 0.0), 0.0),
            "sync/broadcast_seconds": tm.broadcast_s, "sync/server_load_seconds": tm.server_load_s,
            "sync/drain_seconds": tail,  # after the gather: the last buckets still on the wire
        })

    def _bcast(self, obj):
        return collectives.broadcast_object(obj)


_THP_WARNED = False


def _warn_without_thp() -> None:
    """Once per process. torch's CPU allocator reads THP_MEM_ALLOC_ENABLE ONCE, at the process's first
    CPU tensor allocation (importing dcpo_mcore's engine already allocates), so setting it from here
    would have no effect: it must be in the trainer's environment when it starts."""
    global _THP_WARNED
    if not _THP_WARNED and "THP_MEM_ALLOC_ENABLE" not in os.environ:
        _THP_WARNED = True
        log.warning("weight sync over gloo: THP_MEM_ALLOC_ENABLE is not set in this trainer's environment; "
                    "start the trainer with THP_MEM_ALLOC_ENABLE=1 (torch then backs large CPU buffers with "
                    "huge pages; fresh buffers fill ~4x faster, see docs/performance.md 'Weight sync')")


def _rendezvous(admins: Sequence[EngineAdmin], reqs, create, timeout_s: float):
    """Run the servers' init calls and the trainer's group creation together; fail fast if a server
    refuses (the creation would otherwise wait for it until the timeout)."""
    errors: list[BaseException | None] = [None] * len(admins)
    done = [threading.Event() for _ in admins]

    def init(i: int) -> None:
        try:
            admins[i].init_weights_update_group(reqs[i])
        except BaseException as exc:  # noqa: BLE001
            errors[i] = exc
        finally:
            done[i].set()

    box: dict[str, Any] = {}

    def make() -> None:
        try:
            box["pg"] = create()
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    threads = [threading.Thread(target=init, args=(i,), daemon=True) for i in range(len(admins))]
    maker = threading.Thread(target=make, daemon=True)
    for t in [maker, *threads]:
        t.start()
    deadline = time.monotonic() + timeout_s
    while maker.is_alive():
        bad = [i for i, ev in enumerate(done) if ev.is_set() and errors[i] is not None]
        if bad:
            raise SyncError(f"{admins[bad[0]].url} refused to join the weight-update group: "
                            f"{one_line(errors[bad[0]], 400)}")
        if time.monotonic() > deadline:
            raise SyncError(f"weight-update group not formed within {timeout_s:.0f} s")
        time.sleep(0.01)
    for t in threads:
        t.join(timeout_s)
    if "error" in box:
        raise SyncError(f"weight-update group creation failed: {one_line(box['error'], 400)}")
    bad = [i for i in range(len(admins)) if errors[i] is not None]
    if bad:
        raise SyncError(f"{admins[bad[0]].url} failed to join the weight-update group: "
                        f"{one_line(errors[bad[0]], 400)}")
    return box["pg"]


def _begin(admin: EngineAdmin) -> None:
    """begin_weight_update; a session left open by a trainer that died mid-sync is closed first."""
    try:
        admin.begin_weight_update()
    except RequestRejected as exc:
        if "already open" not in str(exc):
            raise
        log.warning("%s had a weight-update session open (a previous sync died?); closing it", admin.url)
        admin.end_weight_update()
        admin.begin_weight_update()


def _destroy_req(name):
    from dcpo_mcore.rollout.wire import DestroyWeightsUpdateGroupRequest

    return DestroyWeightsUpdateGroupRequest(group_name=name)


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - best-effort cleanup
        log.debug("ignored during weight-sync cleanup: %s", one_line(exc, 400))
