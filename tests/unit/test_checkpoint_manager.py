"""CheckpointManager in one process (no torch.distributed): atomic saves, pruning, validation and
fallback, crash safety, and bit-exact round trips of the trainer state and the RNG states."""
import json
import logging
import random

import numpy as np
import pytest
import torch

from dcpo_mcore.algo.sas import PromptStats, PromptStatsStore
from dcpo_mcore.checkpoint import CheckpointError, CheckpointManager, capture_rng_state, restore_rng_state
from dcpo_mcore.engine import collectives as comm

SHARD_BYTES = 3000


def engine_save(directory):
    """Stands in for PolicyEngine.save_checkpoint: a 'big' shard (size-checked) and a small metadata file."""
    directory.mkdir()
    (directory / "__0_0.distcp").write_bytes(bytes(range(256)) * (SHARD_BYTES // 256))
    (directory / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')


def sas_store() -> PromptStatsStore:
    store = PromptStatsStore()
    for k, (n, m, s) in enumerate([(1, 0.1 + 0.2, 1 / 3), (7, -2.5e-17, 0.0), (2, 1e300, 5e-324), (3, -0.0, 2.0)]):
        store.set(f"prompt-{k}", PromptStats(n, m, s))
    return store


def trainer_state(step: int) -> dict:
    return {"step": step, "weight_version": step + 1, "sas": sas_store().state_dict(),
            "data": {"epoch": 0, "cursor": 17 * step, "order_seed": 1234},
            "lr": {"steps_done": step}, "config": "model:\n  hf_path: /x\nalgo:\n  name: dcpo\n"}


def manager(tmp_path, keep_last=3):
    # checksum_max_bytes below the shard size: the shard is checked by size, the rest by sha256 too
    return CheckpointManager(tmp_path / "ckpt", keep_last=keep_last, checksum_max_bytes=1000)


def save(mgr, step, state=None):
    return mgr.save(step, engine_save, state if state is not None else trainer_state(step))


def steps_on_disk(mgr):
    return sorted(p.name for p in mgr.root.iterdir() if p.name.startswith("step_"))


def _bits(d):  # exact comparison of nested floats (== would accept -0.0 for 0.0)
    return json.dumps(d, default=str) + repr([v.hex() for v in _floats(d)])


def _floats(d):
    if isinstance(d, float):
        yield d
    elif isinstance(d, dict):
        for v in d.values():
            yield from _floats(v)
    elif isinstance(d, list):
        for v in d:
            yield from _floats(v)


def test_not_distributed_here():
    assert not comm.active() and comm.world_size() == 1


def test_rng_capture_restore_gives_the_same_draws():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng_state()

    def draw():
        return random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(4).tolist()

    first = draw()
    draw()  # move on
    restore_rng_state(state)
    assert draw() == first


def test_rng_state_of_another_format_is_refused():
    with pytest.raises(ValueError, match="format"):
        restore_rng_state({**capture_rng_state(), "format": 99})


def test_save_writes_a_complete_checkpoint(tmp_path):
    mgr = manager(tmp_path)
    path = save(mgr, 5)
    assert path == mgr.root / "step_00000005" and path.is_dir()
    assert [p.name for p in mgr.root.iterdir() if p.name.startswith(".tmp-")] == []
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 5 and manifest["world_size"] == 1
    files = manifest["files"]
    assert set(files) == {"model/__0_0.distcp", "model/metadata.json", "rng/rank0.pt", "trainer_state.json"}
    for rel, entry in files.items():
        assert entry["size"] == (path / rel).stat().st_size
    assert files["model/__0_0.distcp"]["sha256"] is None  # big: size only
    assert len(files["trainer_state.json"]["sha256"]) == 64
    assert mgr.latest_pointer() == path and (mgr.root / "latest").read_text() == "step_00000005\n"
    assert mgr.problem(path) is None


def test_keep_last_prunes_older_checkpoints(tmp_path):
    mgr = manager(tmp_path, keep_last=2)
    for step in (10, 20, 30, 40):
        save(mgr, step)
    assert steps_on_disk(mgr) == ["step_00000030", "step_00000040"]
    assert mgr.latest_pointer().name == "step_00000040"
    assert not any(p.name.startswith(".tmp-") for p in mgr.root.iterdir())


def test_keep_last_one_keeps_only_the_new_one(tmp_path):
    mgr = manager(tmp_path, keep_last=1)
    save(mgr, 1), save(mgr, 2)
    assert steps_on_disk(mgr) == ["step_00000002"]
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)


def test_tmp_leftover_is_never_loaded_and_is_cleaned(tmp_path):
    mgr = manager(tmp_path)
    save(mgr, 1)
    leftover = mgr.root / ".tmp-step2-deadbeef"
    (leftover / "model").mkdir(parents=True)
    (leftover / "manifest.json").write_text("{}")
    assert mgr.find_latest_valid() == mgr.root / "step_00000001"
    assert leftover.exists()  # finding never deletes
    assert mgr.resolve_resume("auto") == mgr.root / "step_00000001"
    assert not leftover.exists()  # startup cleans
    (leftover / "model").mkdir(parents=True)
    save(mgr, 3)
    assert not leftover.exists()  # and so does the next save


def _drop_manifest(p):
    (p / "manifest.json").unlink()


def _garble_manifest(p):
    (p / "manifest.json").write_text('{"format": 1, "files": {"model/')


def _delete_shard(p):
    (p / "model/__0_0.distcp").unlink()


def _truncate_shard(p):
    data = (p / "model/__0_0.distcp").read_bytes()
    (p / "model/__0_0.distcp").write_bytes(data[: len(data) // 2])


def _flip_small_file(p):
    text = (p / "trainer_state.json").read_text()
    (p / "trainer_state.json").write_text(text.replace('"step": 2', '"step": 9'))


def _delete_rng(p):
    (p / "rng/rank0.pt").unlink()


CORRUPTIONS = {"missing manifest": (_drop_manifest, "no manifest.json"),
               "garbled manifest": (_garble_manifest, "manifest.json is unreadable"),
               "missing shard": (_delete_shard, "model/__0_0.distcp is missing"),
               "truncated shard": (_truncate_shard, "truncated"),
               "edited small file": (_flip_small_file, "sha256"),
               "missing rng file": (_delete_rng, "rng/rank0.pt is missing")}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_with_one_warning(tmp_path, caplog, name):
    corrupt, expected = CORRUPTIONS[name]
    mgr = manager(tmp_path)
    save(mgr, 1), save(mgr, 2)
    corrupt(mgr.root / "step_00000002")
    with caplog.at_level(logging.WARNING, logger="dcpo_mcore.checkpoint"):
        assert mgr.resolve_resume("auto") == mgr.root / "step_00000001"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "step_00000002" in warnings[0] and expected in warnings[0]
    state = mgr.load(mgr.root / "step_00000001", lambda d: None)
    assert state["step"] == 1


@pytest.mark.parametrize("name", ["garbled manifest", "truncated shard", "missing rng file"])
def test_explicit_corrupt_path_raises_one_line(tmp_path, name):
    corrupt, expected = CORRUPTIONS[name]
    mgr = manager(tmp_path)
    path = save(mgr, 1)
    corrupt(path)
    for call in (lambda: mgr.resolve_resume(str(path)), lambda: mgr.load(path, lambda d: None)):
        with pytest.raises(CheckpointError) as info:
            call()
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg and expected in msg and "checkpoint.resume=auto" in msg


def test_explicit_paths_that_are_not_checkpoints(tmp_path):
    mgr = manager(tmp_path)
    save(mgr, 1)
    with pytest.raises(CheckpointError, match="checkpoint root"):
        mgr.resolve_resume(str(mgr.root))
    with pytest.raises(CheckpointError, match="does not exist"):
        mgr.resolve_resume(str(tmp_path / "nope"))


def test_resolve_resume_modes(tmp_path):
    mgr = manager(tmp_path)
    assert mgr.resolve_resume("auto") is None  # no root yet: a fresh run
    save(mgr, 3), save(mgr, 4)
    assert mgr.resolve_resume("never") is None
    assert mgr.resolve_resume("auto") == mgr.root / "step_00000004"
    assert mgr.resolve_resume(str(mgr.root / "step_00000003")) == mgr.root / "step_00000003"


def test_all_checkpoints_corrupt_means_fresh_start(tmp_path, caplog):
    mgr = manager(tmp_path)
    _drop_manifest(save(mgr, 1))
    with caplog.at_level(logging.WARNING, logger="dcpo_mcore.checkpoint"):
        assert mgr.find_latest_valid() is None
    assert len(caplog.records) == 1


def test_crash_inside_engine_save_leaves_the_previous_checkpoint(tmp_path):
    mgr = manager(tmp_path)
    save(mgr, 1)

    def crashing_save(directory):
        engine_save(directory)  # part of the files are written...
        raise RuntimeError("node lost")  # ...then the job dies

    with pytest.raises(RuntimeError, match="node lost"):
        mgr.save(2, crashing_save, trainer_state(2))
    assert steps_on_disk(mgr) == ["step_00000001"]
    assert mgr.latest_pointer().name == "step_00000001"
    assert mgr.resolve_resume("auto") == mgr.root / "step_00000001"
    assert mgr.load(mgr.root / "step_00000001", lambda d: None)["step"] == 1


def test_failed_rank_file_write_raises_checkpoint_error(tmp_path, monkeypatch):
    mgr = manager(tmp_path)
    save(mgr, 1)
    import dcpo_mcore.checkpoint.manager as m

    def full_disk(ckpt, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(m, "write_trainer_state", full_disk)
    with pytest.raises(CheckpointError, match="No space left") as info:
        save(mgr, 2)
    assert "\n" not in str(info.value) and "previous checkpoint is untouched" in str(info.value)
    assert steps_on_disk(mgr) == ["step_00000001"]


def test_trainer_state_and_rng_round_trip_bit_exact(tmp_path):
    mgr = manager(tmp_path)
    state = trainer_state(7)
    random.seed(11), np.random.seed(12), torch.manual_seed(13)
    seen = []
    path = mgr.save(7, lambda d: (engine_save(d), seen.append(d)), state)
    after_save = (random.random(), np.random.rand(2).tolist(), torch.randn(3).tolist())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # what a fresh process would do

    loaded_dirs = []
    got = mgr.load(path, loaded_dirs.append)
    assert loaded_dirs == [path / "model"] and seen[0].name == "model"
    assert (random.random(), np.random.rand(2).tolist(), torch.randn(3).tolist()) == after_save
    assert got == state and _bits(got) == _bits(state)
    store = PromptStatsStore()
    store.load_state_dict(got["sas"])
    assert _bits(store.state_dict()) == _bits(sas_store().state_dict())
    assert [(k, v.visits, v.mean.hex(), v.std.hex()) for k, v in store.items()] == \
        [(k, v.visits, v.mean.hex(), v.std.hex()) for k, v in sas_store().items()]


def test_trainer_state_with_tensors_is_saved_as_pt(tmp_path):
    mgr = manager(tmp_path)
    state = {"step": 3, "counts": torch.arange(5, dtype=torch.float64) / 3, "pair": (1, 2.5)}
    path = save(mgr, 3, state)
    assert (path / "trainer_state.pt").is_file() and not (path / "trainer_state.json").exists()
    got = mgr.load(path, lambda d: None)
    assert torch.equal(got["counts"], state["counts"]) and got["pair"] == (1, 2.5) and got["step"] == 3


def test_saving_the_same_step_again_replaces_it(tmp_path, caplog):
    mgr = manager(tmp_path)
    save(mgr, 1), save(mgr, 2)
    with caplog.at_level(logging.WARNING, logger="dcpo_mcore.checkpoint"):
        save(mgr, 2, {**trainer_state(2), "weight_version": 99})
    assert "already exists" in caplog.text
    assert steps_on_disk(mgr) == ["step_00000001", "step_00000002"]
    assert mgr.load(mgr.resolve_resume("auto"), lambda d: None)["weight_version"] == 99


def test_older_resume_then_save_keeps_and_warns_about_newer_checkpoints(tmp_path, caplog):
    mgr = manager(tmp_path, keep_last=1)
    save(mgr, 10), save(mgr, 20)
    with caplog.at_level(logging.WARNING, logger="dcpo_mcore.checkpoint"):
        save(mgr, 15)  # e.g. an explicit resume from an older checkpoint, then a save
    assert steps_on_disk(mgr) == ["step_00000015", "step_00000020"]
    assert "step_00000020" in caplog.text and "auto-resume would pick them" in caplog.text


def test_resume_at_another_world_size_restores_rank0_host_rng(tmp_path, monkeypatch, caplog):
    mgr = manager(tmp_path)
    torch.manual_seed(5)
    path = save(mgr, 1)
    expected = torch.rand(3)
    torch.manual_seed(0)
    monkeypatch.setattr(comm, "world_size", lambda: 2)  # as if 2 ranks loaded a 1-rank checkpoint
    with caplog.at_level(logging.WARNING, logger="dcpo_mcore.checkpoint"):
        mgr.load(path, lambda d: None)
    assert torch.equal(torch.rand(3), expected)
    assert "saved by 1 ranks and is loaded by 2" in caplog.text


def test_trainer_state_that_could_not_be_loaded_is_refused_at_save(tmp_path):
    mgr = manager(tmp_path)
    with pytest.raises(CheckpointError, match=r"trainer_state\['sas'\] is a PromptStatsStore.*state_dict"):
        save(mgr, 1, {"step": 1, "sas": sas_store()})
    assert steps_on_disk(mgr) == []


def test_a_complete_tmp_directory_is_still_never_loaded(tmp_path):
    mgr = manager(tmp_path)
    path = save(mgr, 1)
    tmp = mgr.root / ".tmp-step1-0123abcd"
    path.rename(tmp)  # killed between the manifest and the rename: complete, but not published
    assert mgr.find_latest_valid() is None
    with pytest.raises(CheckpointError, match="never loaded"):
        mgr.load(tmp, lambda d: None)


def test_rank0_files_round_trip_and_are_covered_by_the_manifest(tmp_path):
    mgr = manager(tmp_path)
    path = mgr.save(4, engine_save, trainer_state(4), rank0_files={"rollout_buffer.json": b'{"5": 1}'})
    assert mgr.read_rank0_file(path, "rollout_buffer.json") == b'{"5": 1}'
    assert mgr.read_rank0_file(save(mgr, 5), "rollout_buffer.json") is None  # a checkpoint without one
    (path / "rollout_buffer.json").write_bytes(b'{"5": 2}')  # edited: the manifest's checksum catches it
    with pytest.raises(CheckpointError, match="rollout_buffer.json"):
        mgr.load(path, lambda d: None)


@pytest.mark.parametrize("name", ["trainer_state.json", "rng", "a/b"])
def test_a_rank0_file_cannot_replace_the_checkpoints_own(tmp_path, name):
    with pytest.raises(CheckpointError, match="not saved"):
        manager(tmp_path).save(1, engine_save, trainer_state(1), rank0_files={name: b"x"})
