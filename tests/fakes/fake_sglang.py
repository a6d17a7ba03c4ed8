"""A stand-in for an SGLang server: standard library only, starts in well under a second.

For fast tests of code that talks to SGLang (the rollout client's retries, the manager's restarts,
a trainer loop) without sglang installed. It speaks the subset of the HTTP API that dcpo_mcore uses,
with SGLang's JSON shapes: ``/health``, ``/model_info``, ``/server_info``, ``/generate`` (token ids
drawn from a seeded RNG, fake logprobs, n, max_new_tokens, stop_token_ids, input logprobs),
``/update_weight_version``, the weight-update endpoints (answered with success), ``/abort_request``,
``/flush_cache``. It is NOT a model: outputs carry no meaning.

Run like the real server (unknown flags are ignored):
``python -m tests.fakes.fake_sglang --model-path M --host 127.0.0.1 --port P``. Fault
injection: ``--startup-delay S`` (before binding, like ``import sglang``), ``--fail-first K`` (the
first K /generate answer HTTP 500), ``--die-after K`` (the process exits while handling the K-th
/generate, like a crash mid-rollout; with ``--die-once-file F`` only if F does not exist yet, and it
is created, so a restarted server stays up), ``--token-delay S`` (seconds per generated token).
A port that is already taken makes it print uvicorn's "address already in use" and exit 1.
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.fakes.json_http import send_json

__all__ = ["main"]


class _State:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.weight_version = "default"
        self.generate_calls = 0
        self.served = 0
        self.aborted: list[str] = []
        self.lock = threading.Lock()
        self.rng_counter = 0


def _sample(state: _State, body: dict, index: int) -> dict:
    args = state.args
    params = body.get("sampling_params") or {}
    ids = body.get("input_ids")
    if ids is None:
        ids = [ord(c) % args.vocab_size for c in body.get("text", "")] or [0]
    with state.lock:
        state.rng_counter += 1
        counter = state.rng_counter
    seed = params.get("sampling_seed")
    rng = random.Random(f"{seed}-{ids}-{index}" if seed is not None else f"{counter}-{os.getpid()}-{ids}")
    max_new = int(params.get("max_new_tokens", 16))
    stops = set(params.get("stop_token_ids") or [])
    if not params.get("ignore_eos"):
        stops.add(args.eos_token_id)
    out, finish = [], {"type": "length", "length": max_new}
    for _ in range(max_new):
        tok = rng.randrange(args.vocab_size)
        out.append(tok)
        if tok in stops:
            finish = {"type": "stop", "matched": tok}
            break
    time.sleep(args.token_delay * len(out))
    lp = -math.log(args.vocab_size)
    meta = {"id": body.get("rid"), "finish_reason": finish, "prompt_tokens": len(ids),
            "completion_tokens": len(out), "cached_tokens": 0, "weight_version": state.weight_version}
    if body.get("return_logprob"):
        meta["output_token_logprobs"] = [[lp + rng.uniform(-0.5, 0.0), t, None] for t in out]
        start = body.get("logprob_start_len", -1)
        if start is not None and start >= 0:
            meta["input_token_logprobs"] = [[None if k == 0 else lp, t, None] for k, t in enumerate(ids) if k >= start]
        else:
            meta["input_token_logprobs"] = []
    return {"text": " ".join(map(str, out)), "output_ids": out, "meta_info": meta}


class _Handler(BaseHTTPRequestHandler):
    server_version = "fake-sglang/0"
    state: _State

    def log_message(self, fmt, *args):  # access log like uvicorn's, to stdout (the server log)
        print(f'INFO:     {self.client_address[0]} - "{self.command} {self.path}" {args[1] if len(args) > 1 else ""}',
              flush=True)

    def _send(self, status: int, payload) -> None:
        send_json(self, status, payload)

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw else {}

    def do_GET(self):  # noqa: N802 - http.server API
        st = self.state
        path = self.path.split("?")[0]
        if path == "/health":
            self._send(200, {})
        elif path in ("/model_info", "/get_model_info"):
            self._send(200, {"model_path": st.args.model_path, "weight_version": st.weight_version,
                             "is_generation": True})
        elif path in ("/server_info", "/get_server_info"):
            self._send(200, {"fake": True, "served_requests": st.served, "generate_calls": st.generate_calls,
                             "aborted": st.aborted, "pid": os.getpid(), "version": "fake"})
        else:
            self._send(404, {"detail": "Not Found"})

    def do_POST(self):  # noqa: N802 - http.server API
        st = self.state
        path = self.path.split("?")[0]
        body = self._body()
        if path == "/generate":
            with st.lock:
                st.generate_calls += 1
                call = st.generate_calls
            if st.args.die_after and call >= st.args.die_after:
                if st.args.die_once_file:
                    with open(st.args.die_once_file, "w") as f:
                        f.write(str(os.getpid()))
                print(f"fake server: dying on /generate call {call} (--die-after)", flush=True)
                os._exit(3)
            if call <= st.args.fail_first:
                self._send(500, {"error": {"message": f"injected failure {call}"}})
                return
            n = int((body.get("sampling_params") or {}).get("n") or 1)
            samples = [_sample(st, body, i) for i in range(n)]
            with st.lock:
                st.served += 1
            self._send(200, samples if n > 1 else samples[0])
        elif path == "/update_weight_version":
            st.weight_version = str(body["new_version"])
            self._send(200, {"success": True, "message": "ok", "new_version": st.weight_version})
        elif path in ("/init_weights_update_group", "/begin_weight_update", "/update_weights_from_distributed",
                      "/end_weight_update", "/destroy_weights_update_group"):
            if path == "/init_weights_update_group" and body.get("backend", "nccl") != "gloo":
                self._send(400, {"success": False, "message": "fake server is CPU-only: backend must be gloo"})
                return
            if path == "/update_weights_from_distributed" and body.get("weight_version"):
                st.weight_version = str(body["weight_version"])
            self._send(200, {"success": True, "message": f"{path} ok (fake)"})
        elif path == "/abort_request":
            st.aborted.append(body.get("rid", ""))
            self._send(200, {})
        elif path == "/flush_cache":
            self._send(200, {})
        else:
            self._send(404, {"detail": "Not Found"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", default="fake")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--startup-delay", type=float, default=0.0)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--die-after", type=int, default=0)
    p.add_argument("--die-once-file", default=None)
    p.add_argument("--token-delay", type=float, default=0.0)
    p.add_argument("--vocab-size", type=int, default=64)
    p.add_argument("--eos-token-id", type=int, default=-1)
    args, _unknown = p.parse_known_args(argv)
    if args.die_once_file and os.path.exists(args.die_once_file):
        args.die_after = 0  # died once already: this is the restarted server
    time.sleep(args.startup_delay)
    _Handler.state = _State(args)
    try:
        httpd = ThreadingHTTPServer((args.host, args.port), _Handler)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        print(f"ERROR:    [Errno {exc.errno}] error while attempting to bind on address "
              f"('{args.host}', {args.port}): {reason}", flush=True)
        return 1
    httpd.daemon_threads = True
    # The router probes gRPC (an HTTP/2 preface) before HTTP: one line, not a traceback.
    httpd.handle_error = lambda request, addr: print(f"INFO:     unparsable request from {addr[0]} ignored",
                                                     flush=True)
    print(f"INFO:     fake SGLang server running on http://{args.host}:{args.port} (pid {os.getpid()})", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:  # pragma: no cover
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
