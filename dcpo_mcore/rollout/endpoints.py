"""Where generation requests go, and what to do when one of those places fails.

The client asks an :class:`Endpoints` object for the URLs it may send ``/generate`` to, whether a
URL is ready, and reports failures to it. :class:`StaticEndpoints` is a fixed list (servers someone
else runs); :class:`dcpo_mcore.rollout.server.ServerManager` implements the same three methods for
servers it owns, and answers ``report_failure`` by restarting a dead server.
"""
from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

__all__ = ["Endpoints", "StaticEndpoints", "normalize_url"]


def normalize_url(url: str) -> str:
    """``host:port`` or ``http://host:port/`` -> ``http://host:port``."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


@runtime_checkable
class Endpoints(Protocol):
    def generate_urls(self) -> list[str]:
        """Base URLs that serve ``/generate`` (a router, or the workers themselves)."""

    def is_ready(self, url: str) -> bool:
        """False while ``url`` is known to be down or restarting."""

    def report_failure(self, url: str, cause: str) -> bool:
        """Tell the owner that ``url`` failed. True = it is being restarted: wait for ``is_ready``."""


class StaticEndpoints:
    """A fixed list of servers we do not own: always 'ready', never restarted."""

    def __init__(self, urls: Iterable[str]):
        self._urls = [normalize_url(u) for u in urls]
        if not self._urls:
            raise ValueError("no SGLang URL given")

    def generate_urls(self) -> list[str]:
        return list(self._urls)

    def is_ready(self, url: str) -> bool:
        return True

    def report_failure(self, url: str, cause: str) -> bool:
        return False

    def __repr__(self) -> str:
        return f"StaticEndpoints({self._urls})"
