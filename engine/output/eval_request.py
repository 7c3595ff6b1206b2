"""What an evaluation is asked to do: plain values, free of torch, so commands can carry it.

The demo's evaluation files go by name as well as by path (``--eval-text demo``,
``--include-path demo``, or the task ``mptui_demo_order`` alone): an installed mptui keeps them
somewhere in site-packages, and README's walk-through must run from any folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import ClassVar

from ..defaults import DEFAULT_EVAL_BATCH_SIZE, DEFAULT_SEQLEN
from ..errors import BadInput, DiskFull, EngineError
from ..session.disk import write_bytes_atomic

#: The zero-shot tasks of docs/method.md §5.
ZERO_SHOT_TASKS = ("piqa", "winogrande", "hellaswag", "arc_easy", "arc_challenge")

#: The name of the demo's files: its held-out text as ``--eval-text``/``--perplexity``, the
#: folder of its task as ``--include-path``. Always the name: a file or folder called ``demo``
#: is ``./demo``.
DEMO = "demo"
#: The demo's local lm-eval task (mptui/demo/tasks.py builds its items). Asked for with no
#: ``--include-path``, it brings its own folder.
DEMO_TASK = "mptui_demo_order"
DEMO_TEXT = "validation.txt"
DEMO_ITEMS = "order.jsonl"
#: Where the demo's task YAML is written, under the cache folder.
DEMO_TASKS_FOLDER = "demo-tasks"

# lm-eval opens a task's data files relative to the working directory, so the YAML cannot ship
# in the package: it is written to the cache with the absolute path of the packaged items.
_DEMO_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {items}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_target: label
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 1.0
"""


def demo_folder() -> Path:
    """The installed ``mptui/demo`` folder, found without importing it: the engine imports
    nothing of the app's side, and the package itself is only data here."""
    spec = find_spec("mptui.demo")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise BadInput("the demo's files are not installed (no mptui.demo package)")
    return Path(locations[0])


def cache_root() -> Path:
    """mptui's cache folder, as the CLI computes it (mptui/places.py, which the engine cannot
    import): ``$XDG_CACHE_HOME/mptui``, else ``~/.cache/mptui``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mptui"


def demo_task_folder(cache: Path | None = None) -> Path:
    """A folder for ``--include-path`` holding the demo task's YAML, under ``cache`` (default:
    :func:`cache_root`), written only when missing or different, so a full cache that already
    holds it still works. A full disk is one :class:`DiskFull`; any other failure to write is
    one :class:`EngineError` naming the folder."""
    folder = (cache or cache_root()) / DEMO_TASKS_FOLDER
    yaml = folder / f"{DEMO_TASK}.yaml"
    text = _DEMO_YAML.format(task=DEMO_TASK, items=(demo_folder() / DEMO_ITEMS).resolve())
    try:
        if yaml.is_file() and yaml.read_text(encoding="utf-8") == text:
            return folder
        write_bytes_atomic(yaml, text.encode())
    except DiskFull:
        raise
    except OSError as error:
        raise EngineError(
            f"could not write the demo's task file in {folder}: {error.strerror or error}"
        ) from None
    return folder


def named_text(text: str | None) -> str | None:
    """``--eval-text``/``--perplexity``: the name ``demo`` is the demo's held-out text."""
    return str(demo_folder() / DEMO_TEXT) if text == DEMO else text


def named_include_path(include_path: str | None, tasks: tuple[str, ...] = ()) -> str | None:
    """``--include-path``: the name ``demo`` is the demo's task folder, which the demo's task
    also brings by itself when no folder is given."""
    if include_path == DEMO or (include_path is None and DEMO_TASK in tasks):
        return str(demo_task_folder())
    return include_path


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate: lm-eval tasks (none: skip), and a text for a rolling perplexity."""

    tasks: tuple[str, ...] = ()
    include_path: str | None = None
    limit: int | None = None
    batch_size: int = DEFAULT_EVAL_BATCH_SIZE
    text: str | None = None
    seqlen: int = DEFAULT_SEQLEN

    #: The demo's task and its folder, for the app's side, which reaches the engine through
    #: ``mptui.engine.api`` only.
    DEMO_TASK: ClassVar[str] = DEMO_TASK
    demo_task_folder = staticmethod(demo_task_folder)

    @classmethod
    def from_options(
        cls,
        tasks: str | None,
        text: str | None,
        seqlen: int,
        *,
        include_path: str | None = None,
        limit: int | None = None,
        batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
    ) -> EvalRequest:
        """From comma-separated task names; with neither tasks nor a text, the tasks of
        docs/method.md §5. The demo's names become paths here (see :func:`named_text` and
        :func:`named_include_path`), once, where the command line is read: the request then
        holds paths that mean the same on a worker or an attached app."""
        names: tuple[str, ...] = ()
        if tasks:
            names = tuple(name.strip() for name in tasks.split(",") if name.strip())
        elif not text:
            names = ZERO_SHOT_TASKS
        include_path = named_include_path(include_path, names)
        return cls(names, include_path, limit, batch_size, named_text(text), seqlen)

    def check(self) -> None:
        """Fail before anything long starts."""
        if not self.tasks and not self.text:
            raise BadInput("nothing to evaluate: give tasks or a text for perplexity")
        if self.text and not Path(self.text).is_file():
            raise BadInput(f"perplexity text '{self.text}' does not exist")
        if self.include_path and not Path(self.include_path).is_dir():
            raise BadInput(f"task folder '{self.include_path}' does not exist")
