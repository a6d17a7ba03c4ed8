"""Guards the test layout itself: every tier under tests/ must be collected by a bare `pytest`."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bare_pytest_collects_every_tier():
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q"], cwd=REPO,
                         capture_output=True, text=True, timeout=300).stdout
    collected_dirs = {line.split("/")[1] for line in out.splitlines() if line.startswith("tests/") and "::" in line}
    tiers = {p.name for p in (REPO / "tests").iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    assert tiers <= collected_dirs, f"not collected: {sorted(tiers - collected_dirs)}"
    assert "dist" in tiers
