"""The repository stands on its own: nothing refers outside it, and every docs citation resolves.

Code and comments cite our docs as ``docs/<name>.md [id]``; each id is the bracketed tag of a
heading in that file (``## [dac-bounds] Dynamic clip bounds``), so a renamed or deleted section
fails here instead of leaving a dangling reference.
"""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Built from pieces so this file does not match itself.
OUTSIDE = [re.compile(p) for p in (
    r"\.\./" + "shared", "/" + r"work/", "dcpo" + "_spec", "platform" + "_notes", r"\bdesign" + r"\.md",
    "gpu_path" + "_review", r"\bspec " + "§", r"\(B(?:[1-9]|1[0-9]|2[01])[,)]", r"\bspec B[0-9]")]
CITATION = re.compile(r"docs/([a-z_]+)\.md[`)]* \[([a-z0-9-]+)\]")
HEADING_ID = re.compile(r"^#+ \[([a-z0-9-]+)\]", re.M)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".sbatch", ".txt", ".ini", ".toml", ".cfg", ""}


def _repo_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    files = [ROOT / f for f in out if (ROOT / f).is_file() and (ROOT / f).suffix in TEXT_SUFFIXES]
    assert len(files) > 100  # the listing really found the repository
    return files


def _text(path: Path) -> str | None:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        return None


def test_no_file_refers_outside_the_repository():
    hits = []
    for path in _repo_files():
        text = _text(path)
        if text is None or path == Path(__file__).resolve():  # its own examples below
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if any(p.search(line) for p in OUTSIDE):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


def _doc_ids() -> dict[str, set[str]]:
    return {p.stem: set(HEADING_ID.findall(p.read_text())) for p in (ROOT / "docs").glob("*.md")}


def test_every_docs_citation_names_an_existing_section():
    ids = _doc_ids()
    missing, cited = [], 0
    for path in _repo_files():
        text = _text(path)
        for doc, tag in CITATION.findall(text or ""):
            cited += 1
            if tag not in ids.get(doc, set()):
                missing.append(f"{path.relative_to(ROOT)}: docs/{doc}.md [{tag}]")
    assert cited > 50  # the code really cites the docs
    assert not missing, "\n".join(sorted(set(missing)))


def test_section_ids_are_unique_within_each_doc():
    for p in (ROOT / "docs").glob("*.md"):
        found = HEADING_ID.findall(p.read_text())
        assert len(found) == len(set(found)), p.name


@pytest.mark.parametrize("line,bad", [
    ("see ../" + "shared/data/x.parquet", True), ("one r_max (B" + "13)", True), ("(spec §" + "4.1)", True),
    ("see docs/algorithm.md [dac-bounds]", False), ("H100 80 GiB (B200 later)", False)])
def test_the_outside_reference_patterns(line, bad):
    assert any(p.search(line) for p in OUTSIDE) == bad
