"""Is each SGLang worker up, and which weights does it hold? One cheap probe per worker, in parallel.

``GET /model_info`` answers at once and carries the worker's ``weight_version``, so one call tells the
weight sync both "alive" and "stale". ``GET /health`` is only the fallback when ``/model_info`` does not
answer 200: in SGLang 0.5.23 it is ``health_generate`` (a 1-token generation plus ``asyncio.sleep(1)``),
i.e. 1 s per call, which used to be a fixed 1 s per push per worker (performance.md "Weight sync").
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from dcpo_mcore.rollout._http import request_json

from .errors import SyncError

__all__ = ["Probe", "probe_worker", "probe_workers", "wait_workers_ready"]
log = logging.getLogger(__name__)
T = TypeVar("T")
PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Probe:
    url: str
    alive: bool
    version: str | None  # the worker's weight_version (None: unknown -- not answered, or only /health did)
    via: str  # "model_info" | "health" | "manager" (our manager says it is not ready) | "unreachable"


def probe_worker(admin: Any, manager: Any = None, *, fallback: bool = True,
                 timeout_s: float = PROBE_TIMEOUT_S) -> Probe:
    """Probe one worker (``admin``: an EngineAdmin). ``manager`` (a ServerManager or None) is asked
    first: a server it is restarting is not alive whatever answers on its port. ``fallback``: when
    ``/model_info`` does not answer 200, ask ``/health`` (1 s) before calling the worker dead."""
    url = admin.url
    if manager is not None and not manager.is_ready(url):
        return Probe(url, False, None, "manager")
    try:
        ans = request_json("GET", url, "/model_info", timeout=timeout_s)
        if ans.ok:
            body = ans.body if isinstance(ans.body, dict) else {}
            version = body.get("weight_version")
            return Probe(url, True, None if version is None else str(version), "model_info")
    except Exception:  # noqa: BLE001 - unreachable: maybe /health says otherwise (or nothing answers)
        pass
    if fallback:
        try:
            if admin.health(timeout_s):
                return Probe(url, True, None, "health")
        except Exception:  # noqa: BLE001 - unreachable: not (yet) alive
            pass
    return Probe(url, False, None, "unreachable")


def probe_workers(admins: Sequence[Any], manager: Any = None, *, fallback: bool = True) -> list[Probe]:
    """:func:`probe_worker` on every worker at once (threads), in ``admins`` order."""
    return _parallel(lambda a: probe_worker(a, manager, fallback=fallback), admins)


def wait_workers_ready(admins: Sequence[Any], manager: Any = None, timeout_s: float = 600.0,
                       poll_s: float = 0.5) -> list[Probe]:
    """Wait (up to ``timeout_s``) until every worker is alive; return their probes in ``admins`` order.

    A dead server we own is being restarted by the manager's watchdog (``report_failure`` wakes it); an
    attached one may be restarted by whoever runs it. Raises :class:`SyncError` (one line) when our
    manager gave a server up, or when one is still down at the deadline."""
    deadline = time.monotonic() + timeout_s
    done: dict[str, Probe] = {}
    pending = list(admins)
    announced: set[str] = set()
    while True:
        for a, p in zip(pending, probe_workers(pending, manager)):
            if p.alive:
                done[a.url] = p
        pending = [a for a in pending if a.url not in done]
        if not pending:
            return [done[a.url] for a in admins]
        for a in pending:
            if manager is not None and manager.is_failed(a.url):
                raise SyncError(f"SGLang worker {a.url} has failed and will not be restarted (see its log)")
        if time.monotonic() > deadline:
            raise SyncError(f"SGLang worker {pending[0].url} is unreachable and did not come back within "
                            f"{timeout_s:.0f} s")
        for a in pending:
            if a.url not in announced:
                log.warning("weight sync: waiting for SGLang worker %s to come back", a.url)
                announced.add(a.url)
            if manager is not None:
                manager.report_failure(a.url, "weight sync")
        time.sleep(poll_s)


def _parallel(fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(len(items), 32), thread_name_prefix="dcpo-probe") as pool:
        return list(pool.map(fn, items))
