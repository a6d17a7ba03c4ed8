"""Rollout errors. Each one's ``str()`` is ONE line that names the server and the cause
(docs/architecture.md [conv-one-line-errors]); a launch failure adds the tail of the server log after that
first line."""
from __future__ import annotations

import asyncio
import socket

from dcpo_mcore.errors import UserError, one_line

__all__ = ["GenerationAborted", "RequestRejected", "RolloutError", "ServerLaunchError",
           "ServerUnreachable", "describe_exception"]


def _causes(exc: BaseException) -> list[BaseException]:
    """exc, then what it wraps: urllib's ``reason``, aiohttp's ``os_error``, ``__cause__``/``__context__``."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(out) < 6 and all(cur is not e for e in out):
        out.append(cur)
        wrapped = [getattr(cur, "reason", None), getattr(cur, "os_error", None), cur.__cause__, cur.__context__]
        cur = next((w for w in wrapped if isinstance(w, BaseException)), None)
    return out


def describe_exception(exc: BaseException) -> str:
    """A short one-line cause for a transport error (connection refused, timed out, ...)."""
    for e in _causes(exc):
        text = str(e)
        if isinstance(e, ConnectionRefusedError) or "Connect call failed" in text or "Connection refused" in text:
            return "connection refused (nothing listens on that port)"
        if isinstance(e, socket.gaierror) or "Name or service not known" in text:
            return f"host name does not resolve ({one_line(e, 120)})"
        if isinstance(e, (TimeoutError, asyncio.TimeoutError, socket.timeout)):
            return "timed out"
        if isinstance(e, (ConnectionResetError, BrokenPipeError)) or type(e).__name__ in (
                "ServerDisconnectedError", "RemoteDisconnected", "IncompleteRead"):
            return "connection closed mid-request (did the server die?)"
    return one_line(exc, typed=True)


class RolloutError(UserError, RuntimeError):
    """Base of every error raised by dcpo_mcore.rollout."""


class ServerUnreachable(RolloutError):
    """A server could not be reached (or kept failing) after the allowed retries."""

    def __init__(self, url: str, cause: str, *, attempts: int | None = None):
        self.url, self.cause, self.attempts = url, cause, attempts
        tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
        super().__init__(f"SGLang server {url} is unreachable{tries}: {one_line(cause)} "
                         f"(check that it runs and the URL/port is right)")


class RequestRejected(RolloutError):
    """The server answered with a 4xx status: the request itself is wrong; it is not retried."""

    def __init__(self, url: str, status: int, message: str):
        self.url, self.status, self.message = url, status, message
        super().__init__(f"SGLang server {url} rejected the request (HTTP {status}): {one_line(message)}")


class ServerLaunchError(RolloutError):
    """A server we launched exited or did not become healthy before its deadline."""

    def __init__(self, summary: str, log_tail: str = "", log_path: str | None = None):
        self.summary, self.log_tail, self.log_path = summary, log_tail, log_path
        text = one_line(summary, 500)
        if log_path:
            text += f" (log: {log_path})"
        if log_tail:
            text += "\n--- last lines of the server log ---\n" + log_tail.rstrip()
        super().__init__(text)


class GenerationAborted(RolloutError):
    """``abort()`` was called while a batch was in flight."""
