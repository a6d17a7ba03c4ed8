"""Blocking JSON-over-HTTP for control calls (health checks, weight-update endpoints).

Standard library only, so the server manager and the admin client work in any thread without an
event loop. Generation goes through the asyncio client in client.py instead.
"""
from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from .errors import ServerUnreachable, describe_exception

__all__ = ["HttpAnswer", "request_json"]


class HttpAnswer:
    """Status code and decoded body (JSON if it parses, else the text)."""

    __slots__ = ("status", "body")

    def __init__(self, status: int, body: Any):
        self.status, self.body = status, body

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def message(self) -> str:
        if isinstance(self.body, dict):
            for key in ("message", "error", "detail"):
                if key in self.body:
                    return str(self.body[key])
        return str(self.body)[:500]

    def __repr__(self) -> str:
        return f"HttpAnswer({self.status}, {str(self.body)[:80]!r})"


def _decode(raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def request_json(method: str, base_url: str, path: str, body: Any = None, *,
                 timeout: float = 30.0) -> HttpAnswer:
    """Send one request to ``base_url + path``; any HTTP status comes back as an :class:`HttpAnswer`.

    Raises :class:`ServerUnreachable` (one line: URL and cause) when no HTTP answer arrives:
    connection refused, DNS failure, timeout, connection closed mid-request.
    """
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base_url.rstrip("/") + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return HttpAnswer(resp.status, _decode(resp.read()))
    except urllib.error.HTTPError as exc:  # a real HTTP answer with a 4xx/5xx status
        try:
            raw = exc.read()
        except Exception:  # noqa: BLE001 - body unreadable: keep the status
            raw = b""
        return HttpAnswer(exc.code, _decode(raw))
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise ServerUnreachable(base_url, f"{method} {path}: {describe_exception(exc)}") from exc
