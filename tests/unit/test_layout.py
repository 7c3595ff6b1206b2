"""Tests a newcomer can find: every test file lives in the folder of what it exercises, and each
folder's tests carry its marker, so ``pytest -m unit`` is the fast part alone."""

from __future__ import annotations

import ast
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


def test_a_test_module_imported_by_plain_name_sits_in_the_same_folder():
    """``from test_x import y`` only resolves when the importer's folder is on the path, which
    pytest sees to for the importer's own folder alone; helpers shared across folders sit next
    to conftest.py, and anything else is imported as ``tests.<group>.test_x``."""
    shared = {path.stem for path in TESTS.glob("*.py")}
    wrong = []
    for path in TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0):
                continue
            name = node.module
            local = (path.parent / f"{name}.py").is_file()
            if name.startswith("test_") and not local and name not in shared:
                wrong.append(f"{path.relative_to(TESTS)}: from {name} import ...")
    assert not wrong, wrong
