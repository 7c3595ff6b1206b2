"""The plan file (docs/method.md §8): written atomically, read back with its format checked."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from . import events as ev


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_plan(path: Path, plan: dict) -> None:
    write_json_atomic(path, plan)


class PlanWriter:
    """Rewrites plan.json after every commit and at the end, so a killed run leaves its plan."""

    def __init__(self, folder: Path, plan: Callable[[], dict | None]) -> None:
        self.path = Path(folder) / "plan.json"
        self._plan = plan

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, (ev.StepCommitted, ev.StepUndone)):
            plan = self._plan()
            if plan:
                write_plan(self.path, plan)
        elif isinstance(event, ev.Finished) and event.plan:
            write_plan(self.path, event.plan)
