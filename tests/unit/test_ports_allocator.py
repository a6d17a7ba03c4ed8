"""Ports we pick for servers and for the weight-sync TCPStore stay below the kernel's ephemeral range
(outgoing connections -- gloo's pair connects, HTTP clients -- take ports from that range, and could take
ours between the pick and the bind), never collide with a port in use, and are never handed out twice
while reserved."""
import socket

from dcpo_mcore.rollout import ports
from dcpo_mcore.rollout.ports import PortAllocator, is_port_free


def test_picks_are_below_the_ephemeral_range_and_distinct_while_reserved():
    low = ports._ephemeral_low()
    alloc = PortAllocator(seed=1)
    picked = [alloc.pick() for _ in range(200)]
    assert all(20000 <= p < low for p in picked), (low, min(picked), max(picked))
    assert len(set(picked)) == len(picked)


def test_a_port_in_use_or_reserved_is_never_picked(monkeypatch):
    monkeypatch.setattr(ports, "_ephemeral_low", lambda: 20120)  # a small range: [20000, 20119]
    alloc = PortAllocator(seed=2)
    assert (alloc.low, alloc.high) == (20000, 20119)
    held = []
    for port in range(20000, 20060):  # half the range is listened on by someone else
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            held.append(s)
        except OSError:
            s.close()
    try:
        busy = {s.getsockname()[1] for s in held}
        got = [alloc.pick() for _ in range(20)]
        assert not busy & set(got) and len(set(got)) == 20
        assert all(not is_port_free(p) for p in busy)
        alloc.release(got[0])
        assert got[0] not in alloc._reserved
    finally:
        for s in held:
            s.close()
