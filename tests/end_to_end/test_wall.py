"""The wall between engine and app, and a CLI that starts without torch: each checked in a fresh
interpreter, since this one has imported everything already."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mptui

ENGINE_DIR = Path(__file__).resolve().parents[2] / "engine"
MPTUI_SCRIPT = Path(sys.executable).parent / "mptui"


def engine_modules() -> list[str]:
    names = []
    for path in sorted(ENGINE_DIR.rglob("*.py")):
        parts = path.relative_to(ENGINE_DIR).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(("mptui", "engine", *parts)))
    return names


def test_importing_the_engine_loads_neither_textual_nor_the_app(tmp_path):
    modules = engine_modules()
    assert "mptui.engine.runner" in modules and len(modules) > 10
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'textual'"
        " or (m.startswith('mptui.') and not m.startswith('mptui.engine')))\n"
        "print('LOADED', bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert "LOADED []" in result.stdout, result.stdout + result.stderr


def run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPROFILEIMPORTTIME": "1"}
    return subprocess.run(
        [str(MPTUI_SCRIPT), *args], cwd=tmp_path, capture_output=True, text=True, env=env
    )


def test_help_and_version_answer_without_importing_torch(tmp_path):
    for flag in ("--help", "--version"):
        result = run_cli(flag, tmp_path=tmp_path)
        assert result.returncode == 0, result.stderr
        imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
        assert "torch" not in imported and "transformers" not in imported
        assert "textual" not in imported
    assert mptui.__version__ in run_cli("--version", tmp_path=tmp_path).stdout
    assert "--target-ratio" in run_cli("--help", tmp_path=tmp_path).stdout


@pytest.mark.parametrize(
    "module",
    [
        "mptui.engine.control.commands",
        "mptui.engine.control.events",
        "mptui.engine.api",
        "mptui.engine.search.settings",
        "mptui.engine.search.run_request",
        "mptui.engine.output.eval_request",
        "mptui.engine.search.plan",
        "mptui.engine.control.run_view",
        "mptui.engine.model.facts",
    ],
)
def test_plain_value_modules_import_no_torch(module):
    code = (
        f"import sys, {module}\n"
        "heavy = sorted({'torch', 'transformers', 'textual'} & set(sys.modules))\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_plan_module_does_not_import_torch():
    code = (
        "import sys, mptui.engine.search.plan, mptui.app.state; assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
