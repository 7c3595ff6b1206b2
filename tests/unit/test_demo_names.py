"""The demo's evaluation files by name (``--eval-text demo``, ``--include-path demo``, the task
``mptui_demo_order`` alone), from any folder: what README's walk-through types after a
``pip install``, where no repository path exists."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest

from mptui.engine.errors import DiskFull, EngineError
from mptui.engine.output.eval_request import (
    DEMO_TASKS_FOLDER,
    EvalRequest,
    demo_task_folder,
)

DEMO = Path(find_spec("mptui.demo").submodule_search_locations[0])
YAML = f"{EvalRequest.DEMO_TASK}.yaml"


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder that is not the repository, and a cache of this test's own."""
    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return here


def test_demo_names_the_packaged_text_and_the_task_folder(elsewhere: Path, tmp_path: Path):
    request = EvalRequest.from_options("mptui_demo_order", "demo", 128, include_path="demo")
    request.check()
    assert Path(request.text) == DEMO / "validation.txt"
    folder = tmp_path / "cache" / "mptui" / DEMO_TASKS_FOLDER
    assert Path(request.include_path) == folder
    yaml = (folder / YAML).read_text()
    assert f"test: {(DEMO / 'order.jsonl').resolve()}\n" in yaml  # absolute: any cwd works
    assert "task: mptui_demo_order\n" in yaml


def test_the_demo_task_alone_brings_its_folder(elsewhere: Path):
    alone = EvalRequest.from_options("mptui_demo_order", None, 128)
    named = EvalRequest.from_options("mptui_demo_order", None, 128, include_path="demo")
    assert alone.include_path == named.include_path and alone.text is None
    assert (Path(alone.include_path) / YAML).is_file()


def test_other_tasks_and_paths_are_left_as_given(elsewhere: Path, tmp_path: Path):
    request = EvalRequest.from_options("piqa", "notes.txt", 128, include_path="my_tasks")
    assert (request.tasks, request.text, request.include_path) == (
        ("piqa",), "notes.txt", "my_tasks",
    )  # fmt: skip
    assert not (tmp_path / "cache").exists()  # nothing written for a request without the demo
    theirs = EvalRequest.from_options("mptui_demo_order", None, 128, include_path="my_tasks")
    assert theirs.include_path == "my_tasks"


def test_a_file_called_demo_is_dot_slash_demo(elsewhere: Path):
    (elsewhere / "demo").write_text("my own text\n")
    assert Path(EvalRequest.from_options(None, "demo", 128).text) == DEMO / "validation.txt"
    mine = EvalRequest.from_options(None, "./demo", 128)
    mine.check()
    assert mine.text == "./demo"


def test_the_task_file_is_written_once_and_rewritten_when_stale(elsewhere: Path, tmp_path: Path):
    """A cache that already holds the right file is not written to (a full cache then still
    works); one left by another install, pointing elsewhere, is replaced."""
    folder = demo_task_folder()
    yaml = folder / YAML
    first = yaml.stat().st_ino
    assert demo_task_folder() == folder and yaml.stat().st_ino == first
    yaml.write_text(yaml.read_text().replace(str(DEMO), "/gone/site-packages/mptui/demo"))
    demo_task_folder()
    assert str(DEMO) in yaml.read_text() and "/gone/" not in yaml.read_text()
    assert sorted(p.name for p in folder.iterdir()) == [YAML]  # no temporary file left


def test_a_cache_that_cannot_be_written_is_one_sentence(elsewhere: Path, tmp_path: Path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    with pytest.raises(EngineError) as raised:
        demo_task_folder(blocked)
    assert not isinstance(raised.value, DiskFull)
    message = str(raised.value)
    assert message.startswith(f"could not write the demo's task file in {blocked}/")
    assert "\n" not in message
