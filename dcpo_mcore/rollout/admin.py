"""Blocking client for one SGLang worker's control endpoints: weight updates, weight version, health.

Weight-update calls must reach EVERY worker directly (the sglang-router answers them with 404):

    for url in servers.worker_urls:
        EngineAdmin(url).update_weight_version("step-12")

``update_weights_from_distributed`` blocks until the server has received every tensor, so the
weight sync (dcpo_mcore/sync) runs it in a thread while it broadcasts
(docs/platform.md [sglang-weight-update]).
A call that fails raises :class:`RequestRejected` with the server's message, in one line.
"""
from __future__ import annotations

from typing import Any, Literal

from ._http import HttpAnswer, request_json
from .endpoints import normalize_url
from .errors import RequestRejected
from .wire import (BeginWeightUpdateRequest, DestroyWeightsUpdateGroupRequest, EndWeightUpdateRequest,
                    InitWeightsUpdateGroupRequest, UpdateWeightsFromDistributedRequest,
                    UpdateWeightVersionRequest, WeightUpdateResponse, WireModel)

__all__ = ["EngineAdmin"]


class EngineAdmin:
    """Control calls on ONE server (a worker, not the router). ``timeout_s`` bounds each call."""

    def __init__(self, url: str, timeout_s: float = 600.0):
        self.url = normalize_url(url)
        self.timeout_s = timeout_s

    # ------------------------------------------------------------------ weight updates
    def init_weights_update_group(self, req: InitWeightsUpdateGroupRequest) -> WeightUpdateResponse:
        """Blocks until the trainer (rank 0) has joined the same rendezvous: call it in a thread."""
        return self._update("/init_weights_update_group", req)

    def begin_weight_update(self, req: BeginWeightUpdateRequest | None = None) -> WeightUpdateResponse:
        return self._update("/begin_weight_update", req or BeginWeightUpdateRequest())

    def update_weights_from_distributed(self, req: UpdateWeightsFromDistributedRequest) -> WeightUpdateResponse:
        """Blocks while the trainer broadcasts the tensors: call it in a thread."""
        return self._update("/update_weights_from_distributed", req)

    def end_weight_update(self, req: EndWeightUpdateRequest | None = None) -> WeightUpdateResponse:
        return self._update("/end_weight_update", req or EndWeightUpdateRequest())

    def destroy_weights_update_group(self, req: DestroyWeightsUpdateGroupRequest | None = None) -> WeightUpdateResponse:
        return self._update("/destroy_weights_update_group", req or DestroyWeightsUpdateGroupRequest())

    def update_weight_version(self, version: str | UpdateWeightVersionRequest, *,
                              abort_all_requests: bool = True) -> WeightUpdateResponse:
        req = version if isinstance(version, UpdateWeightVersionRequest) else \
            UpdateWeightVersionRequest(new_version=version, abort_all_requests=abort_all_requests)
        return self._update("/update_weight_version", req)

    # ------------------------------------------------------------------ state
    def health(self, timeout_s: float = 10.0) -> bool:
        """True if ``GET /health`` answers 200 (raises ServerUnreachable if nothing answers)."""
        return request_json("GET", self.url, "/health", timeout=timeout_s).status == 200

    def model_info(self) -> dict[str, Any]:
        return self._get("/model_info")

    def weight_version(self) -> str:
        return str(self.model_info()["weight_version"])

    def server_info(self) -> dict[str, Any]:
        return self._get("/server_info")

    def flush_cache(self) -> None:
        """Drop the radix cache (SGLang answers 400 while requests are running)."""
        self._check("/flush_cache", request_json("POST", self.url, "/flush_cache", timeout=self.timeout_s))

    def abort_request(self, rid: str | None = None, *, abort_all: bool = False) -> None:
        body = {"abort_all": True} if abort_all else {"rid": rid or ""}
        self._check("/abort_request", request_json("POST", self.url, "/abort_request", body, timeout=self.timeout_s))

    def pause_generation(self, mode: Literal["abort", "retract", "in_place"] = "abort") -> None:
        self._check("/pause_generation", request_json("POST", self.url, "/pause_generation", {"mode": mode},
                                                      timeout=self.timeout_s))

    def continue_generation(self) -> None:
        self._check("/continue_generation", request_json("POST", self.url, "/continue_generation", {},
                                                         timeout=self.timeout_s))

    # ------------------------------------------------------------------ internals
    def _update(self, path: str, req: WireModel) -> WeightUpdateResponse:
        ans = request_json("POST", self.url, path, req.body(), timeout=self.timeout_s)
        self._check(path, ans)
        body = ans.body if isinstance(ans.body, dict) else {}
        resp = WeightUpdateResponse(**{"success": True, "message": "", **body})
        if not resp.success:  # HTTP 200 with success=false: treat as the failure it is
            raise RequestRejected(self.url, ans.status, f"{path}: {resp.message}")
        return resp

    def _get(self, path: str) -> dict[str, Any]:
        ans = request_json("GET", self.url, path, timeout=self.timeout_s)
        self._check(path, ans)
        return ans.body if isinstance(ans.body, dict) else {"raw": ans.body}

    def _check(self, path: str, ans: HttpAnswer) -> None:
        if ans.ok:
            return
        hint = " (is this the router? weight-update endpoints must go to each worker directly)" \
            if ans.status == 404 else ""
        raise RequestRejected(self.url, ans.status, f"{path}: {ans.message()}{hint}")

    def __repr__(self) -> str:
        return f"EngineAdmin({self.url})"
