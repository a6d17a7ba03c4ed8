"""The trainer's side of SGLang's weight-update process group (docs/platform.md [sglang-rendezvous]).

SGLang joins as rank ``rank_offset + tp_rank`` through ``tcp://master_address:master_port``: a
TCPStore client wrapped in ``PrefixStore(group_name, store)``, then ``_new_process_group_helper``.
The trainer is rank 0: it hosts the TCPStore and builds its end of the group the same way. A plain
``dist.new_group`` would not rendezvous with it, and the trainer never imports sglang.

Creating the group blocks until every server has joined, so the servers' ``/init_weights_update_group``
calls must run concurrently (in threads) with :func:`create_trainer_group`.
"""
from __future__ import annotations

import ipaddress
import socket
from datetime import timedelta
from urllib.parse import urlparse

import torch.distributed as dist

__all__ = ["create_trainer_group", "destroy_trainer_group", "reachable_address"]
_STORES: dict[int, dist.TCPStore] = {}


def create_trainer_group(master_address: str, master_port: int, world_size: int, backend: str,
                         group_name: str, timeout_s: float) -> dist.ProcessGroup:
    """Host the rendezvous as rank 0 and return the group (blocks until all ``world_size`` ranks join)."""
    from torch.distributed.distributed_c10d import Backend, PrefixStore, _new_process_group_helper, _world

    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(master_address, master_port, world_size, is_master=True, timeout=timeout,
                          wait_for_workers=False)
    pg, _ = _new_process_group_helper(world_size, 0, [], Backend(backend), PrefixStore(group_name, store),
                                      group_name=group_name, backend_options=None, timeout=timeout)
    # Group rank i is "global" rank i for this group only: broadcasts name the source by group rank.
    _world.pg_group_ranks[pg] = {i: i for i in range(world_size)}
    _STORES[id(pg)] = store  # the store (and its listening socket) must live as long as the group
    return pg


def destroy_trainer_group(pg: dist.ProcessGroup | None) -> None:
    """Tear down a healthy group. A group with a stuck operation is dropped instead (destroying it
    could block on that operation); its store closes when the last reference goes."""
    if pg is not None:
        dist.destroy_process_group(pg)
        _STORES.pop(id(pg), None)


def reachable_address(server_urls: list[str]) -> str:
    """The trainer address the servers can connect back to.

    127.0.0.1 when every server is on this host; otherwise the local address of the route to the
    first remote server (a UDP "connect" sends nothing, it only picks the interface).
    """
    hosts = [urlparse(u).hostname or "127.0.0.1" for u in server_urls]
    remote = [h for h in hosts if not _is_local(h)]
    if not remote:
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((remote[0], 9))
        return s.getsockname()[0]


def _is_local(host: str) -> bool:
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
