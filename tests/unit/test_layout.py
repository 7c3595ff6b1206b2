"""Tests a newcomer can find: every test file lives in the folder of what it exercises, and each
folder's tests carry its marker, so ``pytest -m unit`` is the fast part alone."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
GROUPS = {"unit", "engine", "app", "end_to_end"}


def test_every_test_file_is_in_a_group_folder():
    stray = sorted(
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("test_*.py")
        if path.relative_to(TESTS).parts[0] not in GROUPS
    )
    assert not stray, f"move these into one of tests/{{{','.join(sorted(GROUPS))}}}: {stray}"


def test_the_group_marker_follows_the_folder(request: pytest.FixtureRequest):
    marks = {mark.name for mark in request.node.iter_markers()}
    assert "unit" in marks and not marks & (GROUPS - {"unit"})
