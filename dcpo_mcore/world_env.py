"""Environment defaults that let one plain process form a torch.distributed world of 1.

torchrun / srun set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT themselves; a plain
``dcpo-train`` or ``dcpo-demo`` process gets these defaults. No torch.distributed import here, so rooms
that must not import it (demo/, tools) can use it too.
"""
from __future__ import annotations

import os
import socket

WORLD_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def single_process_env_defaults(port: int | None = None) -> None:
    """Fill in a world of one unless a launcher already set WORLD_SIZE and MASTER_PORT."""
    if "WORLD_SIZE" in os.environ and "MASTER_PORT" in os.environ:
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:  # a free port for the default group's TCP store
        with socket.socket() as s:
            s.bind(("127.0.0.1", port or 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def environ_without_world() -> dict[str, str]:
    """This process's environment minus the variables above: for a child that must form its own world
    (a child inheriting MASTER_PORT would try to listen on the port this process's store still holds)."""
    return {k: v for k, v in os.environ.items() if k not in WORLD_ENV_KEYS}
