"""Keeps the parallelism in its own room (docs/architecture.md [conv-rooms]) and the algorithm core pure
([conv-pure-algo])."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "dcpo_mcore"
# convert/ is checkpoint work (it writes and reads megatron dist checkpoints), so it shares that room.
# local_ranks.py hosts and joins the rendezvous store of the local multi-rank launcher.
PARALLEL_ROOMS = {"engine", "sync", "checkpoint", "ops", "convert", "local_ranks.py"}
ALGO_FORBIDDEN = ("torch.distributed", "megatron", "sglang", "pydantic")
PARALLEL_MODULES = ("torch.distributed", "megatron")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _hits(names: set[str], banned: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == b or n.startswith(b + ".") for b in banned))


def test_algo_is_pure_torch():
    files = list((PKG / "algo").glob("*.py"))
    assert len(files) >= 8
    bad = {str(p.name): _hits(_imports(p), ALGO_FORBIDDEN) for p in files}
    assert not {k: v for k, v in bad.items() if v}


def test_only_parallel_rooms_import_distributed_or_megatron():
    offenders = {}
    for path in PKG.rglob("*.py"):
        room = path.relative_to(PKG).parts[0]
        if room in PARALLEL_ROOMS:
            continue
        hits = _hits(_imports(path), PARALLEL_MODULES)
        if hits:
            offenders[str(path.relative_to(PKG))] = hits
    assert not offenders


def test_checker_detects_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch.distributed as dist\nfrom megatron.core import parallel_state\n")
    assert _hits(_imports(bad), PARALLEL_MODULES) == ["megatron.core", "megatron.core.parallel_state", "torch.distributed"]
