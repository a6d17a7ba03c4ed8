"""Rank-side weight-sync scenarios against REAL SGLang workers (started by the pytest process).

Every function runs on all ranks of a gloo launch (tests/dist/launcher.py); rank 0 talks to the servers.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist

from dcpo_mcore.engine.layout import ParallelLayout


def _engine(hf_dir: str, layout: dict):
    from dcpo_mcore.engine.policy import EngineSettings, PolicyEngine

    return PolicyEngine.from_hf(hf_dir, EngineSettings(layout=ParallelLayout(**layout), trainable=False))


def _sync(engine, urls, **settings):
    from dcpo_mcore.sync import SyncSettings, WeightSync

    return WeightSync(engine, urls if dist.get_rank() == 0 else None, SyncSettings(**settings))


def push_and_verify(hf_dir: str, urls: list[str], layout: dict, version: str, **settings) -> dict:
    """Verify (expected to fail: the servers run other weights), push, verify again."""
    from dcpo_mcore.sync import SyncError

    engine = _engine(hf_dir, layout)
    sync = _sync(engine, urls, verify_every=0, **settings)
    out: dict = {"rank": dist.get_rank()}
    try:
        sync.verify()
        out["before_error"] = None
    except SyncError as exc:
        out["before_error"] = str(exc)
    out["metrics"] = sync.push(version)
    out["after_diff"] = sync.verify()
    if dist.get_rank() == 0:
        out["versions"] = [a.weight_version() for a in sync.admins]
    sync.close()
    return out


def push_twice_across_a_restart(hf_dir: str, urls: list[str], signal_dir: str) -> dict:
    """Push v1; ask the test (via a file) to kill worker 1; push v2 once it is back (restarted by the
    test's ServerManager). The second push must notice the restarted worker and re-form the group."""
    engine = _engine(hf_dir, {"tp": 1})
    sync = _sync(engine, urls, verify_every=1, timeout_s=300)
    out = {"v1": sync.push("v1")}
    flag = Path(signal_dir)
    if dist.get_rank() == 0:
        (flag / "pushed").write_text("v1")
        deadline = time.monotonic() + 300
        while not (flag / "killed").exists():
            assert time.monotonic() < deadline, "the test never killed the server"
            time.sleep(0.2)
        out["stale_after_kill"] = sync.stale_workers()
    dist.barrier()
    out["v2"] = sync.push("v2")
    if dist.get_rank() == 0:
        out["versions"] = [a.weight_version() for a in sync.admins]
        out["stale_after_push"] = sync.stale_workers()
    sync.close()
    return out


def bad_bucket(hf_dir: str, url: str) -> dict:
    """A bucket whose declared shape or dtype does not fit the server's model: one-line errors, then a
    full push repairs the server."""
    from dcpo_mcore.sync import Bucket, SyncError
    from dcpo_mcore.engine.hf_mapping import expected_hf_shapes
    from dcpo_mcore.sync.sender import BucketSender

    engine = _engine(hf_dir, {"tp": 1})
    sync = _sync(engine, [url], verify_every=0, reject_grace_s=2.0, timeout_s=120)
    out = {"first": sync.push("good-1")}
    if dist.get_rank() == 0:
        name = "model.norm.weight"
        hidden = engine.arch.hidden_size
        cases = {
            "shape": Bucket(0, [name], ["float32"], [[hidden + 3]], torch.zeros((hidden + 3) * 4, dtype=torch.uint8)),
            "dtype": Bucket(0, [name], ["int64"], [[hidden]], torch.zeros(hidden * 8, dtype=torch.uint8)),
            "size": Bucket(0, [name], ["float32"], [[hidden]], torch.zeros(hidden * 2, dtype=torch.uint8)),
            "name": Bucket(0, ["model.not_a_tensor.weight"], ["float32"], [[hidden]],
                           torch.zeros(hidden * 4, dtype=torch.uint8)),
        }
        for key, bucket in cases.items():
            sync.admins[0].begin_weight_update()
            sender = BucketSender(sync._pg, sync.admins, sync._group_name, 120.0, 2.0,
                                  expected_hf_shapes(engine.arch))
            sender.submit(bucket)
            failure = sender.finish()
            out[key] = None if failure is None else failure.message
            try:
                sync.admins[0].end_weight_update()
            except Exception as exc:  # noqa: BLE001 - recorded for the test
                out[key + "_end"] = str(exc)
            if failure is not None and failure.poisoned:
                sync._pg = None  # the test's own sender broke the group: let push() re-form it
    dist.barrier()
    out["repair"] = sync.push("good-2")
    out["repair_diff"] = sync.verify()
    try:
        _sync(engine, ["http://127.0.0.1:9"], verify_every=0, timeout_s=5).push("nowhere")
        out["wrong_url"] = None
    except SyncError as exc:
        out["wrong_url"] = str(exc)
    sync.close()
    return out


def incompatible_model(hf_dir: str, url: str) -> dict:
    """A trainer model whose shapes do not fit the server's model: a one-line SyncError on every rank."""
    from dcpo_mcore.sync import SyncError

    engine = _engine(hf_dir, {"tp": 1})
    sync = _sync(engine, [url], verify_every=1, max_attempts=2, timeout_s=120)
    try:
        sync.push("incompatible")
        return {"error": None}
    except SyncError as exc:
        return {"error": str(exc)}
