"""CI runs the README's test command, and the second-stack selection names files that exist."""
from pathlib import Path

from tests.conftest import MCORE_API_FILES

REPO = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_ci_runs_the_readme_test_command():
    demo, tests = _readme_commands()
    ci = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith(("#", "set ", "cd "))]
    assert ci == [tests]
    assert "dcpo-demo" in demo and "setup_env.sh" in demo


def test_every_second_stack_file_exists_and_holds_tests():
    for name in MCORE_API_FILES:
        path = REPO / "tests" / name
        assert path.is_file(), f"tests/conftest.py MCORE_API_FILES names a missing file: {name}"
        assert "def test_" in path.read_text(), name
