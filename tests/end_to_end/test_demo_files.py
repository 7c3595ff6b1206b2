"""The demo's evaluation files on a bad day: a full cache folder (the demo's task file is written
there before anything else runs) is one line and exit status 1, never a traceback; and the
engine finds the demo's files by name without importing the app's side."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

MPTUI = Path(sys.executable).parent / "mptui"
DEMO = Path(find_spec("mptui.demo").submodule_search_locations[0])
YAML = "mptui_demo_order.yaml"


def fill(folder: Path) -> Path:
    """Write one file into ``folder`` until its file system has no space left."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def demo_run(cache: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = os.environ | {"XDG_CACHE_HOME": str(cache)}
    return subprocess.run(
        [str(MPTUI), "--demo", "--headless", "--session", str(tmp_path / "session"), *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_demo_with_a_full_cache_is_one_line_and_a_fault(small_disk: Path, tmp_path: Path):
    filler = fill(small_disk)
    done = demo_run(small_disk, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr  # a fault, not bad input
    assert done.stderr == (
        f"mptui: error: no space left on device in {small_disk}/mptui/demo-tasks while writing "
        f"{YAML}\n"
    )
    assert "Traceback" not in done.stdout and not (tmp_path / "session").exists()
    files = [path for path in small_disk.rglob("*") if path.is_file()]
    assert files == [filler]  # nothing half written


@pytest.mark.slow
def test_a_full_cache_that_holds_the_task_file_runs_the_demo(small_disk: Path, tmp_path: Path):
    """Only a write that must happen fails: with the task file already there, the run goes on
    (the calibration tokens, a cache too, are then not kept)."""
    env = os.environ | {"XDG_CACHE_HOME": str(small_disk)}
    code = "from mptui.engine.api import EvalRequest; EvalRequest.demo_task_folder()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    fill(small_disk)
    done = demo_run(small_disk, tmp_path, "--target-ratio", "0.05")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "finished (done)" in done.stdout and "Traceback" not in done.stderr


def test_the_engine_finds_the_demo_by_name_without_importing_it(tmp_path: Path):
    """The engine imports nothing of the app's side (tests/end_to_end/test_wall.py): the demo's
    folder is found through its package's spec, from a folder that is not the repository."""
    code = (
        "import sys\n"
        "from mptui.engine.api import EvalRequest\n"
        "request = EvalRequest.from_options('mptui_demo_order', 'demo', 128)\n"
        "request.check()\n"
        "print(request.text)\n"
        "print(sorted(m for m in sys.modules if m.startswith('mptui.demo')))\n"
    )
    env = os.environ | {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    text, imported = done.stdout.splitlines()
    assert Path(text) == DEMO / "validation.txt" and imported == "[]"
    assert (tmp_path / "cache" / "mptui" / "demo-tasks" / YAML).is_file()
