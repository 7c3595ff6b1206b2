"""A method is an object (docs/method.md §11): each lives in its own file under
engine/search/methods/,
and no code elsewhere compares a method's name; it asks the method object instead."""

from __future__ import annotations

import re
from pathlib import Path

from mptui.engine.search.methods import METHODS, REGISTRY, method_named

ROOT = Path(__file__).resolve().parents[2]
METHODS_FOLDER = ROOT / "engine" / "search" / "methods"
_NAME = "|".join(METHODS)
_QUOTED = rf"""["']({_NAME})["']"""
#: ``x == "sleb"``, ``"sleb" != x``, ``x in ("sleb", ...)`` and ``{"sleb": ...}[x]``-style lookups.
COMPARISONS = (
    re.compile(rf"(==|!=)\s*{_QUOTED}"),
    re.compile(rf"{_QUOTED}\s*(==|!=)"),
    re.compile(rf"\bin\s*[(\[{{][^)\]}}]*{_QUOTED}"),
    re.compile(rf"{{\s*{_QUOTED}\s*:"),
)


def compared_names(text: str) -> list[str]:
    return [
        line.strip()
        for line in text.splitlines()
        if not line.lstrip().startswith("#") and any(p.search(line) for p in COMPARISONS)
    ]


def test_the_scan_finds_the_comparisons_it_forbids():
    forbidden = [
        'if method == "shortgpt":',
        "if 'sleb' != method:",
        'if method in ("sleb", "shortgpt"):',
        'if method not in ["blockpruner"]:',
        'dtype = {"multipruner": "float16"}.get(faithful)',
    ]
    assert [compared_names(line) for line in forbidden] == [[line] for line in forbidden]
    assert compared_names('choices=("multipruner", "blockpruner")') == []
    assert compared_names("method_named(name).whole_layers") == []


def test_no_method_name_is_compared_outside_its_own_file():
    found = []
    for folder in (ROOT / "engine", ROOT / "mptui"):
        for path in sorted(folder.rglob("*.py")):
            if METHODS_FOLDER in path.parents:
                continue
            found += [
                f"{path.relative_to(ROOT)}: {line}" for line in compared_names(path.read_text())
            ]
    advice = "ask the method object (engine/search/methods/) instead:\n"
    assert found == [], advice + "\n".join(found)


def test_each_method_is_one_file_of_the_registry():
    for name in METHODS:
        method = method_named(name)
        assert method is REGISTRY[name] and method.name == name
        assert (METHODS_FOLDER / f"{name}.py").is_file()
        assert type(method).__module__ == f"mptui.engine.search.methods.{name}"
