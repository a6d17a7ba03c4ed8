"""Asyncio client for SGLang ``/generate`` (aiohttp, which SGLang itself depends on).

    client = RolloutClient(servers, ClientOptions(max_concurrency=64), seed=1234)
    groups = await client.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=512),
                                   n=16, step=step)          # groups[i][j]: sample j of prompt i
    groups = client.generate_sync(...)                        # the same, for code without a loop

* **n samples = n requests** (``sampling_params.n`` is left unset). SGLang 0.5.23 does return correct
  per-sample ids and logprobs for ``n > 1``, but one request per sample lets a failed sample be
  retried alone, spreads samples over workers and gives each its own seed; the radix cache shares
  the prompt's prefill either way.
* **Bounded concurrency** (a semaphore per ``generate`` call, over all servers), **per-request timeouts**, **retries with
  exponential backoff and jitter** on transport errors, HTTP 5xx/408/429 and server-side aborts. A
  failed request goes to another ready server when there is one; when the failed server is being
  restarted by its :class:`ServerManager`, the request waits for it (``recovery_timeout_s``). So a
  server that dies mid-rollout loses no sample. HTTP 4xx is the request's fault: raised at once.
* **One log line** per server going down (URL + cause), one when it answers again; when retries run
  out, :class:`ServerUnreachable` says the same in one line.
* **Abort**: :meth:`abort` (thread-safe) cancels everything in flight, asks the servers to abort
  those request ids, and makes ``generate`` raise :class:`GenerationAborted`.
* **Seeds**: with ``seed`` set, sample j of prompt key k at step s gets
  ``sampling_seed = derive_seed(seed, s, k, j)``. SGLang 0.5.23 honours it only when the server runs
  with ``--enable-deterministic-inference`` (GPU attention backends); the CPU engine ignores it.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import aiohttp

from ._http import request_json
from .endpoints import Endpoints, StaticEndpoints
from .errors import (GenerationAborted, RequestRejected, RolloutError, ServerUnreachable,
                     describe_exception)
from .wire import GenerateRequest, GenerateResponse, SamplingParams

__all__ = ["ClientOptions", "PromptInput", "RolloutClient", "derive_seed"]

log = logging.getLogger("dcpo_mcore.rollout")


def derive_seed(seed: int, step: int, prompt_key: str, sample_index: int) -> int:
    """A 63-bit seed from (seed, step, prompt key, sample index): stable across runs and machines."""
    text = f"{seed}\x1f{step}\x1f{prompt_key}\x1f{sample_index}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") & ((1 << 63) - 1)


@dataclass
class ClientOptions:
    """Concurrency, timeouts and retry policy of :class:`RolloutClient`."""

    max_concurrency: int = 64  # /generate requests in flight at once per generate() call, over all servers
    request_timeout_s: float = 600.0  # one request, connect to last byte
    connect_timeout_s: float = 10.0
    max_attempts: int = 6  # per sample; waiting for a restart does not use attempts up
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 8.0
    recovery_timeout_s: float = 900.0  # longest wait for a restarting server
    retry_aborted: bool = True  # a sample the server aborted (finish_reason "abort") is regenerated

    def __post_init__(self):
        if self.max_concurrency < 1 or self.max_attempts < 1:
            raise ValueError("max_concurrency and max_attempts must be >= 1")

    @classmethod
    def from_config(cls, rollout_cfg: Any, **overrides: Any) -> "ClientOptions":
        """From the ``rollout`` config section (max_concurrency, request_timeout_s)."""
        return cls(**{"max_concurrency": rollout_cfg.max_concurrency,
                      "request_timeout_s": rollout_cfg.request_timeout_s, **overrides})


@dataclass(frozen=True)
class PromptInput:
    """A prompt to roll out; ``key`` names it in seeds and logs (e.g. the SAS prompt key)."""

    key: str
    input_ids: tuple[int, ...] | list[int] | None = None
    text: str | None = None


@dataclass
class _Flight:
    """Requests in flight in one event loop (for abort)."""

    loop: asyncio.AbstractEventLoop
    tasks: list[asyncio.Task] = field(default_factory=list)
    rids: dict[str, str] = field(default_factory=dict)  # rid -> server URL


class RolloutClient:
    """See the module docstring. ``endpoints``: a ServerManager (or its ``endpoints()`` view), an
    :class:`Endpoints` object, or URL(s) of servers run elsewhere."""

    def __init__(self, endpoints: Endpoints | Sequence[str] | str, options: ClientOptions | None = None, *,
                 seed: int | None = None):
        if isinstance(endpoints, str):
            endpoints = StaticEndpoints([endpoints])
        elif not hasattr(endpoints, "generate_urls"):
            endpoints = StaticEndpoints(endpoints)
        self.endpoints: Endpoints = endpoints
        self.options = options or ClientOptions()
        self.seed = seed
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "aborted_by_server": 0, "waited_for_restart": 0}
        self._lock = threading.Lock()
        self._flights: list[_Flight] = []
        self._abort_requested = False
        self._down: dict[str, str] = {}  # url -> cause, while a server is failing (one log line each way)
        self._rr = 0

    # ------------------------------------------------------------------ public API
    async def generate(self, prompts: Sequence[PromptInput | Sequence[int] | str], sampling: SamplingParams, *,
                       n: int = 1, step: int = 0, return_input_logprobs: bool = False,
                       return_logprob: bool = True) -> list[list[GenerateResponse]]:
        """``n`` samples of every prompt; result[i][j] is sample j of prompt i (always complete)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if sampling.n not in (None, 1):
            raise ValueError("set n as generate(n=...), not in sampling params (one request per sample)")
        requests = []
        for i, prompt in enumerate(prompts):
            p = _as_prompt(prompt, i)
            for j in range(n):
                params = sampling
                if self.seed is not None:
                    params = sampling.model_copy(update={"sampling_seed": derive_seed(self.seed, step, p.key, j)})
                requests.append(GenerateRequest(
                    input_ids=None if p.input_ids is None else list(p.input_ids), text=p.text,
                    sampling_params=params, return_logprob=return_logprob,
                    logprob_start_len=(0 if return_input_logprobs else -1) if return_logprob else None))
        flat = await self._run_all(requests)
        return [[flat[i * n + j][0] for j in range(n)] for i in range(len(prompts))]

    async def generate_request(self, request: GenerateRequest) -> list[GenerateResponse]:
        """Send one request (retries included); one response per sample (``sampling_params.n``)."""
        return (await self._run_all([request]))[0]

    def generate_sync(self, *args: Any, **kwargs: Any) -> list[list[GenerateResponse]]:
        """:meth:`generate` for callers without a running event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.generate(*args, **kwargs))
        raise RuntimeError("generate_sync() called inside a running event loop; use `await client.generate(...)`")

    def abort(self) -> None:
        """Cancel every request in flight (from any thread); ``generate`` raises GenerationAborted."""
        with self._lock:
            self._abort_requested = True
            flights = list(self._flights)
        rids: list[tuple[str, str]] = []
        for flight in flights:
            rids += [(url, rid) for rid, url in list(flight.rids.items())]
            for task in list(flight.tasks):
                flight.loop.call_soon_threadsafe(task.cancel)
        if rids:  # closing the connection already aborts a request; this is quicker, best effort
            threading.Thread(target=_abort_on_servers, args=(rids,), daemon=True, name="sglang-abort").start()

    # ------------------------------------------------------------------ batch machinery
    async def _run_all(self, requests: list[GenerateRequest]) -> list[list[GenerateResponse]]:
        opts = self.options
        flight = _Flight(asyncio.get_running_loop())
        with self._lock:
            self._abort_requested = False
            self._flights.append(flight)
        sem = asyncio.Semaphore(opts.max_concurrency)
        connector = aiohttp.TCPConnector(limit=opts.max_concurrency, limit_per_host=opts.max_concurrency)
        batch = uuid.uuid4().hex[:12]
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                flight.tasks = [asyncio.create_task(self._one(session, sem, req, f"{batch}-{i}", flight))
                                for i, req in enumerate(requests)]
                try:
                    return list(await asyncio.gather(*flight.tasks))
                except BaseException:
                    for task in flight.tasks:
                        task.cancel()
                    await asyncio.gather(*flight.tasks, return_exceptions=True)
                    raise
        except asyncio.CancelledError:
            if self._abort_requested:
                done = sum(1 for t in flight.tasks if t.done() and not t.cancelled() and t.exception() is None)
                raise GenerationAborted(f"generation aborted: {done} of {len(requests)} requests had finished") \
                    from None
            raise
        finally:
            with self._lock:
                self._flights.remove(flight)

    async def _one(self, session: aiohttp.ClientSession, sem: asyncio.Semaphore, req: GenerateRequest,
                   rid_base: str, flight: _Flight) -> list[GenerateResponse]:
        opts = self.options
        body = req.body()
        timeout = aiohttp.ClientTimeout(total=opts.request_timeout_s, sock_connect=opts.connect_timeout_s)
        attempt, tries, avoid = 0, 0, None  # attempt: the retry budget used; tries: requests sent
        recovery_deadline = None  # waiting for restarts is bounded by time, not by attempts
        while True:
            url = await self._pick_url(avoid)
            attempt, tries = attempt + 1, tries + 1
            rid = f"{req.rid or rid_base}-{tries}"
            status, payload, cause = None, None, None
            async with sem:
                flight.rids[rid] = url
                if self._abort_requested:  # abort() may have listed the rids just before this one: don't send it
                    flight.rids.pop(rid, None)
                    raise asyncio.CancelledError
                self.stats["requests"] += 1
                try:
                    async with session.post(url + "/generate", json={**body, "rid": rid}, timeout=timeout) as resp:
                        status, raw = resp.status, await resp.read()
                    payload = _loads(raw)
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    cause = describe_exception(exc)
                finally:
                    flight.rids.pop(rid, None)
            if status == 200:
                try:
                    items = payload if isinstance(payload, list) else [payload]
                    out = [GenerateResponse.from_wire(x) for x in items]
                except (ValueError, TypeError, KeyError) as exc:
                    raise RolloutError(f"SGLang server {url} sent an unusable /generate answer: {exc}") from exc
                self._mark_up(url)
                aborted = [r for r in out if r.finished_by == "abort"]
                if not (aborted and opts.retry_aborted):
                    return out
                self.stats["aborted_by_server"] += 1
                cause = f"the server aborted the request ({aborted[0].finish_reason.message or 'no reason given'})"
                if attempt >= opts.max_attempts:
                    raise RolloutError(f"SGLang server {url} aborted a request {attempt} times: {cause}")
            elif status is not None and 400 <= status < 500 and status not in (408, 429):
                raise RequestRejected(url, status, _message(payload))
            else:
                if cause is None:
                    cause = f"HTTP {status}: {_message(payload)}"
                recovering = self.endpoints.report_failure(url, cause)
                self._mark_down(url, cause)
                if recovering:
                    attempt -= 1  # waiting for a restart is not a failed attempt ...
                    recovery_deadline = recovery_deadline or time.monotonic() + opts.recovery_timeout_s
                    if time.monotonic() > recovery_deadline:  # ... unless it never ends
                        raise ServerUnreachable(url, f"{cause}; still failing {opts.recovery_timeout_s:.0f} s "
                                                     "after its restart began", attempts=tries)
                elif attempt >= opts.max_attempts:
                    raise ServerUnreachable(url, cause, attempts=attempt)
            self.stats["retries"] += 1
            avoid = url
            await asyncio.sleep(self._backoff(attempt))

    async def _pick_url(self, avoid: str | None) -> str:
        """A ready URL, round robin, preferring one other than ``avoid``; waits while all restart."""
        deadline = None
        while True:
            urls = self.endpoints.generate_urls()
            ready = [u for u in urls if self.endpoints.is_ready(u)]
            if ready:
                preferred = [u for u in ready if u != avoid] or ready
                self._rr += 1
                return preferred[self._rr % len(preferred)]
            is_failed = getattr(self.endpoints, "is_failed", None)
            if is_failed is not None and urls and all(is_failed(u) for u in urls):
                raise ServerUnreachable(urls[0], "it died and could not be restarted (see its log)")
            if deadline is None:
                deadline = time.monotonic() + self.options.recovery_timeout_s
                self.stats["waited_for_restart"] += 1
            elif time.monotonic() > deadline:
                url = avoid or (urls[0] if urls else "<none>")
                raise ServerUnreachable(url, f"no server became ready within {self.options.recovery_timeout_s:.0f} s "
                                             f"({self._down.get(url, 'restarting')})")
            await asyncio.sleep(0.25)

    def _backoff(self, attempt: int) -> float:
        base = min(self.options.backoff_max_s, self.options.backoff_initial_s * 2 ** max(0, attempt - 1))
        return base * (0.5 + random.random() / 2)

    def _mark_down(self, url: str, cause: str) -> None:
        if url not in self._down:
            self._down[url] = cause
            log.warning("SGLang server %s failed: %s; retrying its requests", url, cause)

    def _mark_up(self, url: str) -> None:
        if self._down.pop(url, None) is not None:
            log.warning("SGLang server %s answers again", url)


def _as_prompt(prompt: PromptInput | Sequence[int] | str, index: int) -> PromptInput:
    if isinstance(prompt, PromptInput):
        return prompt
    if isinstance(prompt, str):
        return PromptInput(key=str(index), text=prompt)
    return PromptInput(key=str(index), input_ids=list(prompt))


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", errors="replace")


def _message(payload: Any) -> str:
    if isinstance(payload, dict):
        for key in ("error", "message", "detail"):
            if key in payload:
                value = payload[key]
                return value.get("message", str(value)) if isinstance(value, dict) else str(value)
    return str(payload)[:300]


def _abort_on_servers(rids: Iterable[tuple[str, str]]) -> None:
    for url, rid in rids:
        try:
            request_json("POST", url, "/abort_request", {"rid": rid}, timeout=5.0)
        except Exception:  # noqa: BLE001 - best effort: the closed connection aborts it anyway
            pass
