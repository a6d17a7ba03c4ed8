"""Free TCP ports for the servers we launch, without collisions.

A port is picked at random below the kernel's ephemeral range (so outgoing connections, which get
ephemeral ports, never take it while the server is still importing), checked by binding it, and
reserved in this process so two servers launched at once never get the same one. A port can still
be taken by another process between the pick and the server's own bind (~20-60 s later, after
``import sglang``); the manager detects "address already in use" and relaunches on a new port.
"""
from __future__ import annotations

import random
import socket
import threading

__all__ = ["PortAllocator", "is_port_free", "PORTS"]


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def is_port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if ``port`` can be bound on ``host`` and on all interfaces right now."""
    for h in dict.fromkeys((host, "0.0.0.0")):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((h, port))
            except OSError:
                return False
    return True


class PortAllocator:
    """Hands out distinct free ports from [low, high]; thread-safe; ``release`` gives one back."""

    def __init__(self, low: int = 20000, high: int | None = None, seed: int | None = None):
        self.low = low
        self.high = min(high or 65535, _ephemeral_low() - 1)
        if self.high - self.low < 100:  # odd ephemeral range: fall back to the upper range
            self.low, self.high = 40000, 60999
        self._reserved: set[int] = set()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def pick(self, host: str = "127.0.0.1", attempts: int = 200) -> int:
        with self._lock:
            for _ in range(attempts):
                port = self._rng.randint(self.low, self.high)
                if port not in self._reserved and is_port_free(port, host):
                    self._reserved.add(port)
                    return port
        raise RuntimeError(f"no free TCP port found in [{self.low}, {self.high}] after {attempts} tries")

    def reserve(self, port: int) -> None:
        with self._lock:
            self._reserved.add(port)

    def release(self, port: int) -> None:
        with self._lock:
            self._reserved.discard(port)


PORTS = PortAllocator()  # process-wide: every manager in this process shares the reservations
