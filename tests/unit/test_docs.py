"""The repository explains its method itself: no pointer to an outside spec, and every
``docs/method.md §N`` cited in a tracked file names a section that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
METHOD = ROOT / "docs" / "method.md"

# Built from parts so that this file does not match itself.
FORBIDDEN = [
    re.compile(re.escape(".." + "/shared")),
    re.compile(re.escape("shared" + "/SPEC")),
    re.compile(re.escape("SPEC" + ".md")),
    re.compile(r"\b" + "SPEC" + r"\s*§"),
]
CITATION = re.compile(r"docs/method\.md\s*((?:§\d+)(?:\s*(?:,|and|or|/|-|–)\s*§\d+)*)")
SECTION_HEADING = re.compile(r"^##\s+§(\d+)\b", re.MULTILINE)


def tracked_texts() -> dict[str, str]:
    """Every git-tracked file that is text, by its path in the repository."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    texts = {}
    for name in listing.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue  # listed but deleted in the working tree
        data = path.read_bytes()
        if b"\0" in data:
            continue
        texts[name] = data.decode("utf-8", errors="replace")
    return texts


def test_method_has_sections_1_to_11() -> None:
    sections = [int(n) for n in SECTION_HEADING.findall(METHOD.read_text())]
    assert sections == list(range(1, 12))


def test_no_tracked_file_points_at_an_outside_spec() -> None:
    found = [
        f"{name}:{text.count(chr(10), 0, match.start()) + 1}: {match.group(0)}"
        for name, text in tracked_texts().items()
        for pattern in FORBIDDEN
        for match in pattern.finditer(text)
    ]
    assert not found, "cite docs/method.md instead:\n" + "\n".join(found)


def test_cited_sections_exist() -> None:
    sections = set(SECTION_HEADING.findall(METHOD.read_text()))
    missing = [
        f"{name}: docs/method.md {group}"
        for name, text in tracked_texts().items()
        for match in CITATION.finditer(text)
        for group in [match.group(1)]
        if set(re.findall(r"§(\d+)", group)) - sections
    ]
    assert not missing, "no such section in docs/method.md:\n" + "\n".join(missing)
