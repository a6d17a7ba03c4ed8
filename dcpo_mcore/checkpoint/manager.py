"""Atomic, self-validating checkpoints of the whole training state, with automatic resume.

Layout under ``root``::

    step_00000040/              one complete checkpoint (only ever created by a rename)
      model/                    engine_save's output (megatron dist_checkpointing: model + optimizer)
      rng/rank{R}.pt            each rank's generators (checkpoint/rng.py)
      trainer_state.json|.pt    step, weight version, SAS stats, data cursor, LR counters, config text
      manifest.json             written last: every file with its size (+ sha256 if small; files.py)
    latest                      "step_00000040\\n", replaced atomically (for people and tools)
    .tmp-step40-1a2b3c4d/       a save in progress, or the remains of a killed one; never loaded

Why a save cannot leave a half checkpoint behind: everything is written into a ``.tmp-*`` directory,
fsynced, described by a manifest, and only then renamed to ``step_*`` (a rename is atomic on POSIX
file systems) and the root directory fsynced. A save killed before the rename leaves only a ``.tmp-*``
directory, which nothing loads and the next save (or :meth:`resolve_resume` at startup) deletes. A
``step_*`` directory that is damaged later (disk full, a copy cut short, someone's ``rm``) fails the
manifest check and resume falls back to the previous one with one warning line.

Collective contract: with ``torch.distributed`` initialised, every rank calls :meth:`save`,
:meth:`load`, :meth:`find_latest_valid` and :meth:`resolve_resume` together. Rank 0 does the file
system bookkeeping (directories, manifest, rename, pruning) and broadcasts the outcome, so every rank
gets the same answer or the same :class:`CheckpointError`. The root must be on a file system every rank
sees (dist_checkpointing needs that anyway). Without torch.distributed it works as a single process.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import torch

from dcpo_mcore.engine import collectives as comm
from dcpo_mcore.errors import one_line

from .errors import CheckpointError
from .files import CHECKSUM_MAX_BYTES, MANIFEST, STATE_JSON, STATE_PT, build_manifest, check_manifest
from .files import fsync_dir, fsync_tree, read_manifest, read_trainer_state, replace_atomic, write_durable
from .files import write_trainer_state
from .rng import capture_rng_state, restore_rng_state

log = logging.getLogger(__name__)

MODEL_DIR, RNG_DIR, LATEST, TMP_PREFIX = "model", "rng", "latest", ".tmp-"
_STEP_RE = re.compile(r"^step_(\d{8,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _rng_file(rank: int) -> str:
    return f"{RNG_DIR}/rank{rank}.pt"


class CheckpointManager:
    """Saves, finds, validates and loads checkpoints under one root directory.

    Args:
        root_dir: the checkpoint root (``checkpoint.dir`` of the config).
        keep_last: how many checkpoints to keep (>= 1); older ones are deleted after each save.
        checksum_max_bytes: files up to this size get a sha256 in the manifest, bigger ones a size only.
    """

    def __init__(self, root_dir: str | Path, keep_last: int, checksum_max_bytes: int = CHECKSUM_MAX_BYTES):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 (got {keep_last}): the checkpoint just written is always kept")
        self.root = Path(root_dir)
        self.keep_last = keep_last
        self.checksum_max_bytes = checksum_max_bytes

    # ------------------------------------------------------------------------------------- save
    def save(self, step: int, engine_save: Callable[[Path], None], trainer_state: dict,
             rank0_files: dict[str, bytes] | None = None) -> Path:
        """Write checkpoint ``step`` (collective); returns its ``step_*`` directory.

        ``engine_save(dir)`` is called on every rank with an empty, not yet existing directory inside
        the checkpoint (e.g. ``engine.save_checkpoint``). This rank's RNG state is captured after it, so
        a resumed run continues exactly where this one goes on. ``trainer_state`` (rank 0's is written)
        must be identical on every rank. ``rank0_files`` (name -> bytes, given on rank 0) are state only
        rank 0 has, such as the rollouts generated ahead of training; read them with :meth:`read_rank0_file`.
        """
        tmp = Path(self._on_rank0(lambda: self._begin(step), f"cannot start checkpoint {step}"))
        engine_save(tmp / MODEL_DIR)  # collective; an exception here leaves only the .tmp directory
        error = None
        try:
            self._write_rank_files(tmp, trainer_state, rank0_files or {})
        except Exception as exc:  # noqa: BLE001 - reported on every rank by first_error below
            error = one_line(exc, None, typed=True)
        error = comm.first_error(error)  # also the barrier: every rank has written its files
        if error is not None:
            raise CheckpointError(f"checkpoint {step} in {tmp} was not saved ({error}); the previous "
                                  "checkpoint is untouched; fix the cause (disk full? permissions?) and rerun")
        return Path(self._on_rank0(lambda: self._publish(tmp, step), f"cannot publish checkpoint {step}"))

    def _begin(self, step: int) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        self._clean_stale()
        tmp = self.root / f"{TMP_PREFIX}step{step}-{uuid.uuid4().hex[:8]}"
        (tmp / RNG_DIR).mkdir(parents=True)
        return str(tmp)

    def _write_rank_files(self, tmp: Path, trainer_state: dict, rank0_files: dict[str, bytes]) -> None:
        rank = comm.rank()
        payload = {"rank": rank, "world_size": comm.world_size(), "rng": capture_rng_state()}
        path = tmp / _rng_file(rank)
        with open(path, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        if rank == 0:
            write_trainer_state(tmp, trainer_state)
            for name, data in rank0_files.items():
                if "/" in name or (tmp / name).exists():
                    raise ValueError(f"rank-0 checkpoint file name {name!r} is taken or not a plain name")
                write_durable(tmp / name, data)

    @staticmethod
    def read_rank0_file(path: str | Path, name: str) -> bytes | None:
        """A file :meth:`save` wrote from ``rank0_files``, or None if that checkpoint has none (rank 0;
        the manifest check of :meth:`load` covers it)."""
        file = Path(path) / name
        return file.read_bytes() if file.is_file() else None

    def _publish(self, tmp: Path, step: int) -> str:
        """Rank 0, after every rank wrote its files: fsync, manifest, rename; then pointer and pruning."""
        fsync_tree(tmp)
        manifest = build_manifest(tmp, step, comm.world_size(), self.checksum_max_bytes)
        write_durable(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        fsync_dir(tmp)
        final = self.root / step_dir_name(step)
        if final.exists():  # the same step saved again (e.g. resumed from an older checkpoint)
            log.warning("checkpoint %s already exists; replacing it with the new save", final)
            self._retire(final)
        os.rename(tmp, final)  # the commit point
        fsync_dir(self.root)
        try:
            replace_atomic(self.root / LATEST, f"{final.name}\n".encode())
            self._prune(step)
        except OSError as exc:  # the checkpoint itself is complete; only housekeeping failed
            log.warning("checkpoint %s saved, but updating 'latest' / deleting old checkpoints failed: %s",
                        final, exc)
        log.info("checkpoint saved: %s", final)
        return str(final)

    def _prune(self, step: int) -> None:
        """Keep the one just written plus the ``keep_last - 1`` newest older ones; leave newer ones."""
        dirs = self.step_dirs()
        newer = [p.name for s, p in dirs if s > step]
        if newer:
            log.warning("checkpoints newer than the one just saved (step %d) exist in %s: %s; they come from "
                        "an earlier run and auto-resume would pick them: delete them if that run is abandoned",
                        step, self.root, ", ".join(newer))
        older = [p for s, p in dirs if s < step]
        for path in older[self.keep_last - 1:]:
            self._retire(path)

    def _retire(self, path: Path) -> None:
        """Delete a checkpoint by renaming it to a .tmp-* name first: a crash mid-delete never leaves a
        half-deleted step_* directory behind (and the .tmp-* rest is cleaned later)."""
        doomed = self.root / f"{TMP_PREFIX}retired-{path.name}-{uuid.uuid4().hex[:8]}"
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def _clean_stale(self) -> None:
        """Remove the .tmp-* leftovers of killed saves (only called while no save is running)."""
        if not self.root.is_dir():
            return
        for path in self.root.glob(f"{TMP_PREFIX}*"):
            log.info("removing the remains of an unfinished checkpoint save: %s", path)
            shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------------------------------- find
    def step_dirs(self) -> list[tuple[int, Path]]:
        """(step, path) of every step_* directory, newest first (whether valid or not)."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir()
                 if p.is_dir() and (m := _STEP_RE.match(p.name))]
        return sorted(found, reverse=True)

    def problem(self, path: str | Path) -> str | None:
        """Why ``path`` is not a loadable checkpoint (a short phrase), or None if it is complete."""
        path = Path(path)
        if path.name.startswith(TMP_PREFIX):
            return "it is an unfinished or abandoned save (.tmp-*), which is never loaded"
        if not path.is_dir():
            return "it does not exist" if not path.exists() else "it is not a directory"
        if not (path / MANIFEST).exists() and any(_STEP_RE.match(p.name) for p in path.iterdir()):
            return "it is a checkpoint root, not one checkpoint (name one of its step_* directories)"
        found = check_manifest(path)
        if found is not None:
            return found
        manifest = read_manifest(path)
        files = manifest["files"]
        if STATE_JSON not in files and STATE_PT not in files:
            return "the manifest lists no trainer_state file"
        if not any(f.startswith(f"{MODEL_DIR}/") for f in files):
            return "the manifest lists no model files"
        if any(_rng_file(r) not in files for r in range(int(manifest.get("world_size", 0)))):
            return "the manifest lacks some rank's RNG file"
        m = _STEP_RE.match(path.name)
        if m and int(m.group(1)) != manifest.get("step"):
            return f"its manifest is for step {manifest.get('step')} (a renamed or copied directory?)"
        return None

    def find_latest_valid(self) -> Path | None:
        """The newest complete checkpoint (collective). Each invalid newer one costs one warning line."""
        def scan() -> str | None:
            for _, path in self.step_dirs():
                found = self.problem(path)
                if found is None:
                    return str(path)
                log.warning("checkpoint %s is not usable (%s); skipping it, trying an older one", path, found)
            return None

        found = self._on_rank0(scan, f"cannot scan the checkpoints in {self.root}")
        return Path(found) if found is not None else None

    def latest_pointer(self) -> Path | None:
        """Where the ``latest`` file points (informational: resume scans the directories instead, so a
        save killed between its rename and the pointer update still resumes from the newest one)."""
        try:
            name = (self.root / LATEST).read_text().strip()
        except OSError:
            return None
        return self.root / name if name else None

    def resolve_resume(self, mode: str) -> Path | None:
        """``checkpoint.resume``: "auto" = the latest valid checkpoint or None (a fresh run), "never" =
        None, anything else = that checkpoint, which must be valid (else :class:`CheckpointError`).
        Also removes leftovers of killed saves, which is why it is the call to make at startup."""
        self._on_rank0(self._clean_stale, f"cannot clean {self.root}")
        if mode == "never":
            return None
        if mode == "auto":
            return self.find_latest_valid()
        path = Path(mode)
        self._require_valid(path, f"checkpoint.resume={mode}")
        return path

    # ------------------------------------------------------------------------------------- load
    def load(self, path: str | Path, engine_load: Callable[[Path], Any]) -> dict:
        """Load checkpoint ``path`` (collective): ``engine_load(path / "model")`` restores the engine,
        this rank's RNG state is restored, and the trainer state is returned (as saved, on every rank).

        Resuming at another world size (a resharded resume) has no RNG file for this rank: every rank
        restores rank 0's host generators (python / numpy / torch CPU) and keeps the device and megatron
        tracker generators as the engine seeded them (see rng.restore_rng_state); a log line says so.
        ``engine_load``'s return value is not used: state the trainer needs belongs in trainer_state.
        """
        path = Path(path)
        self._require_valid(path, "checkpoint")

        def read() -> tuple[int, dict]:
            return int(read_manifest(path)["world_size"]), read_trainer_state(path)

        saved_world, state = self._on_rank0(read, f"cannot read checkpoint {path}")
        engine_load(path / MODEL_DIR)
        world = comm.world_size()
        if saved_world == world:
            restore_rng_state(_load_rng(path, comm.rank()))
        else:
            if comm.rank() == 0:
                log.warning("checkpoint %s was saved by %d ranks and is loaded by %d: every rank restores rank "
                            "0's python/numpy/torch CPU RNG; device RNGs keep their fresh seeds", path,
                            saved_world, world)
            restore_rng_state(_load_rng(path, 0), host_only=True)
        if comm.rank() == 0:
            log.info("resumed from checkpoint %s", path)
        return state

    # ---------------------------------------------------------------------------------- helpers
    def _require_valid(self, path: Path, what: str) -> None:
        found = self._on_rank0(lambda: self.problem(path), f"cannot check {path}")
        if found is not None:
            raise CheckpointError(f"{what}: {path} is not a usable checkpoint: {found}; point it at a complete "
                                  f"step_* directory (or use checkpoint.resume=auto to take the newest valid one)")

    def _on_rank0(self, fn: Callable[[], Any], what: str) -> Any:
        """Run ``fn`` on rank 0 and give its result to every rank; a failure raises on every rank."""
        outcome: tuple = ("ok", None)
        if comm.rank() == 0:
            try:
                outcome = ("ok", fn())
            except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
                outcome = ("error", one_line(exc, None, typed=True))
        outcome = comm.broadcast_object(outcome)
        if outcome[0] == "error":
            raise CheckpointError(f"{what}: {outcome[1]} (root {self.root}); check the path, disk space and "
                                  "permissions, then rerun")
        return outcome[1]


def _load_rng(path: Path, rank: int) -> dict:
    return torch.load(path / _rng_file(rank), map_location="cpu", weights_only=True)["rng"]
