"""Rollout: the only code that speaks HTTP to SGLang (docs/architecture.md [folder-map]).

* :class:`ServerManager` / :class:`LaunchSpec` (server.py): launch N local SGLang servers (+ an
  sglang-router when N > 1) or attach to URLs; health waiting, logs, restart of dead servers,
  clean shutdown of only what we started. :attr:`ServerManager.worker_urls` lists the workers that
  weight-update calls must reach one by one.
* :class:`RolloutClient` (client.py): asyncio ``/generate`` client with n samples per prompt,
  logprobs, weight versions, bounded concurrency, retries, failover, abort; ``generate_sync``.
* :class:`EngineAdmin` (admin.py): one worker's weight-update and control endpoints.
* wire.py: pydantic models of the SGLang HTTP requests and responses; errors.py: one-line errors.
* cpu_shim/: the CPU compatibility shim for the server process (tied to pins.SGLANG_VERSION).
"""
from .admin import EngineAdmin
from .endpoints import Endpoints, StaticEndpoints
from .errors import (GenerationAborted, RequestRejected, RolloutError, ServerLaunchError,
                     ServerUnreachable)
from .pins import SGLANG_ROUTER_VERSION, SGLANG_VERSION
from .server import LaunchSpec, ServerManager
from .wire import (BeginWeightUpdateRequest, DestroyWeightsUpdateGroupRequest, EndWeightUpdateRequest,
                    FinishReason, GenerateRequest, GenerateResponse, InitWeightsUpdateGroupRequest,
                    SamplingParams, UpdateWeightsFromDistributedRequest, UpdateWeightVersionRequest,
                    WeightUpdateResponse)

_CLIENT_NAMES = ("ClientOptions", "PromptInput", "RolloutClient", "derive_seed")

__all__ = [
    "BeginWeightUpdateRequest", "DestroyWeightsUpdateGroupRequest", "EndWeightUpdateRequest", "EngineAdmin",
    "Endpoints", "FinishReason", "GenerateRequest", "GenerateResponse", "GenerationAborted",
    "InitWeightsUpdateGroupRequest", "LaunchSpec", "RequestRejected", "RolloutError", "SGLANG_ROUTER_VERSION",
    "SGLANG_VERSION", "SamplingParams", "ServerLaunchError", "ServerManager", "ServerUnreachable",
    "StaticEndpoints", "UpdateWeightVersionRequest", "UpdateWeightsFromDistributedRequest",
    "WeightUpdateResponse", *_CLIENT_NAMES,
]


def __getattr__(name: str):
    # client.py needs aiohttp (installed with the SGLang stack by tools/setup_sglang.sh); import it
    # on first use so the types, the manager and the admin client work without it.
    if name in _CLIENT_NAMES:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
