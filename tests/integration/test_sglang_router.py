"""Two REAL SGLang workers behind a REAL sglang-router: generation is spread over both, and the
weight-update endpoints (which the router answers with 404) reach every worker directly. Plus two
real routers at once in front of fake workers (no port collision)."""
from __future__ import annotations

import importlib.util
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.conftest import count_generate_requests, requires_sglang

pytestmark = pytest.mark.integration


def _router_sees_all_workers(servers, timeout_s: float = 120.0) -> None:
    from dcpo_mcore.rollout._http import request_json

    servers.wait_ready(600)
    deadline = time.monotonic() + timeout_s
    while True:
        body = request_json("GET", servers.router_url, "/workers", timeout=10).body
        healthy = {w["url"] for w in body.get("workers", []) if w.get("is_healthy")}
        if healthy >= set(servers.worker_urls):
            return
        assert time.monotonic() < deadline, f"router never saw all workers healthy: {body}"
        time.sleep(0.5)


@requires_sglang
@pytest.mark.timeout(600)
def test_generation_through_the_router_is_spread_over_both_workers(sglang_servers):
    from dcpo_mcore.rollout import RolloutClient, SamplingParams

    servers = sglang_servers
    assert servers.router_url is not None and len(servers.worker_urls) == 2
    _router_sees_all_workers(servers)
    client = RolloutClient(servers)
    assert client.endpoints.generate_urls() == [servers.router_url]  # generation goes via the router
    before = [count_generate_requests(servers.log_path(i)) for i in range(2)]
    groups = client.generate_sync([[3, 4, 5 + i] for i in range(8)], SamplingParams(max_new_tokens=4), n=2)
    assert [len(g) for g in groups] == [2] * 8
    time.sleep(0.5)  # access-log lines are written after the response
    served = [count_generate_requests(servers.log_path(i)) - b for i, b in zip(range(2), before)]
    print(f"\n[router] /generate served per worker: {served}")
    assert sum(served) >= 16 and min(served) >= 4  # round robin: about 8 each


@requires_sglang
@pytest.mark.timeout(600)
def test_weight_update_endpoints_reach_every_worker_directly(sglang_servers):
    from dcpo_mcore.rollout import (BeginWeightUpdateRequest, EngineAdmin, RequestRejected, RolloutClient,
                                    SamplingParams)

    servers = sglang_servers
    _router_sees_all_workers(servers)
    with pytest.raises(RequestRejected) as info:  # the router does not forward them
        EngineAdmin(servers.router_url).update_weight_version("never")
    assert info.value.status == 404 and "each worker directly" in str(info.value)

    version = f"v-{uuid.uuid4().hex[:8]}"
    for url in servers.worker_urls:
        admin = EngineAdmin(url)
        assert admin.begin_weight_update(BeginWeightUpdateRequest(selector="all")).success
        assert admin.end_weight_update().success
        resp = admin.update_weight_version(version)
        assert resp.success and version in resp.message
        assert admin.weight_version() == version
    groups = RolloutClient(servers).generate_sync([[9, 8, 7], [6, 5, 4]], SamplingParams(max_new_tokens=3), n=4)
    assert {s.weight_version for g in groups for s in g} == {version}


@pytest.mark.timeout(300)
def test_two_routers_in_front_of_fake_workers(tmp_path):
    """The real sglang-router in front of fake workers (tests/fakes/fake_sglang.py), two routers
    at once: they must not collide (each gets its own metrics port; the default is 0.0.0.0:29000);
    generation goes via the router, weight calls are refused there and reach the workers directly."""
    if importlib.util.find_spec("sglang_router") is None or importlib.util.find_spec("aiohttp") is None:
        pytest.skip("sglang-router / aiohttp not installed (bash tools/setup_sglang.sh .venv)")
    from dcpo_mcore.rollout import (EngineAdmin, LaunchSpec, RequestRejected, RolloutClient, SamplingParams,
                                    ServerManager)

    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    managers = [ServerManager(LaunchSpec(model_path="fake-model", num_servers=2, device="cpu", env=env,
                                         server_module="tests.fakes.fake_sglang", shutdown_grace_s=3.0,
                                         startup_timeout_s=120.0), tmp_path / name) for name in "ab"]
    try:
        with ThreadPoolExecutor(2) as pool:  # both at once
            list(pool.map(ServerManager.start, managers))
        for servers in managers:
            assert servers.generate_urls() == [servers.router_url]
            groups = RolloutClient(servers).generate_sync([[i] for i in range(6)], SamplingParams(max_new_tokens=2))
            assert [len(g) for g in groups] == [1] * 6
            with pytest.raises(RequestRejected, match="HTTP 404"):
                EngineAdmin(servers.router_url).update_weight_version("x")
            for url in servers.worker_urls:
                EngineAdmin(url).update_weight_version("w")
            [[sample]] = RolloutClient(servers).generate_sync([[1]], SamplingParams(max_new_tokens=1))
            assert sample.weight_version == "w"
            assert "--prometheus-port" in servers.log_path(None).read_text()
    finally:
        for servers in managers:
            servers.shutdown()
