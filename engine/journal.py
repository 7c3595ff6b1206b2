"""The session folder: what a long run needs so that nothing of it is lost.

``settings.json``   the run request (plain values), written once, atomically
``journal.jsonl``   one line per commit or undo, appended and fsynced as it happens
``plan.json``       a snapshot of the plan, replaced by atomic rename after every change
``events.jsonl``    the event log (flushed, not fsynced: it is for reading, not resuming)
``mptui.log``       the log file
``lock``            held (flock) by the one process that owns the session
``channel_order.safetensors``  the L1 channel order taken at the start, so that resume, eval
                    and export re-apply the plan to the very channels the search kept

Resume re-applies the journal: a SIGKILL at any moment loses at most the step being scored,
because a step is on disk before anyone is told it was committed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path

from . import channel_order
from . import events as ev
from .calibration import CalibrationSpec
from .errors import BadInput
from .evaluate import flat_scores
from .plan import PlanWriter, write_json_atomic
from .settings import PruneSettings
from .setup import RunRequest
from .summary import write_summary

SETTINGS = "settings.json"
JOURNAL = "journal.jsonl"
PLAN = "plan.json"
EVENTS = "events.jsonl"
LOG = "mptui.log"
LOCK = "lock"


class SessionFolder:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_file = None

    @property
    def order_file(self) -> Path:
        return self.path / channel_order.FILE_NAME

    # --- ownership -------------------------------------------------------------------------
    def lock(self) -> None:
        """Own the session, or fail clearly when another process does."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = (self.path / LOCK).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise BadInput(f"session {self.path} is in use by {owner}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        self._lock_file = handle

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # --- settings --------------------------------------------------------------------------
    def write_request(self, request: RunRequest) -> None:
        data = {
            "model": request.model,
            "settings": request.settings.to_dict(),
            "dtype": request.dtype,
            "device": request.device,
            "device_map": request.device_map,
        }
        write_json_atomic(self.path / SETTINGS, data)

    def read_request(self, cache_dir: Path | None = None) -> RunRequest:
        try:
            data = json.loads((self.path / SETTINGS).read_text())
            return self._request(data, cache_dir)
        except FileNotFoundError:
            raise BadInput(f"'{self.path}' is not an mptui session (no {SETTINGS})") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise BadInput(f"{self.path / SETTINGS} is damaged ({error!r})") from None

    def _request(self, data: dict, cache_dir: Path | None) -> RunRequest:
        settings = dict(data["settings"])
        order = tuple(settings.pop("order"))
        shares = dict(zip(order, settings.pop("distribution"), strict=True))
        settings.pop("shares", None)
        calibration = CalibrationSpec(**settings.pop("calibration"))
        known = {f.name for f in dataclasses.fields(PruneSettings)}
        settings = {k: v for k, v in settings.items() if k in known}
        prune = PruneSettings(order=order, shares=shares, calibration=calibration, **settings)
        return RunRequest(
            model=data["model"],
            settings=prune,
            dtype=data.get("dtype"),
            device=data.get("device"),
            device_map=data.get("device_map"),
            cache_dir=cache_dir,
            resume_steps=tuple(self.read_steps()),
        )

    def read_plan(self) -> dict:
        """The plan snapshot, for commands that work on a session (eval, export)."""
        try:
            plan = json.loads((self.path / PLAN).read_text())
        except FileNotFoundError:
            raise BadInput(f"'{self.path}' is not an mptui session with a plan") from None
        except json.JSONDecodeError as error:
            raise BadInput(f"{self.path / PLAN} is damaged ({error})") from None
        if not isinstance(plan, dict) or "steps" not in plan or "model" not in plan:
            raise BadInput(f"{self.path / PLAN} is not an mptui plan")
        return plan

    # --- the journal -----------------------------------------------------------------------
    def _append(self, record: dict) -> None:
        with (self.path / JOURNAL).open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def record_commit(self, step: dict) -> None:
        self._append({"commit": step})

    def record_undo(self, index: int) -> None:
        self._append({"undo": index})

    def read_steps(self) -> list[dict]:
        """The committed steps after replaying commits and undos; a torn last line (the
        process died while writing it) is ignored."""
        steps: list[dict] = []
        path = self.path / JOURNAL
        if not path.exists():
            return steps
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if "commit" in record:
                steps.append(record["commit"])
            elif "undo" in record and steps and steps[-1]["index"] == record["undo"]:
                steps.pop()
        return steps


class SessionRecorder:
    """Subscriber that keeps the session folder up to date from the engine's events."""

    def __init__(self, folder: SessionFolder, plan: Callable[[], dict | None]) -> None:
        self.folder = folder
        self._plan = plan
        self._plan_writer = PlanWriter(folder.path, plan)
        self._events = (folder.path / EVENTS).open("a")
        self._evaluation: dict = {}

    def __call__(self, event: ev.Event) -> None:
        # the journal line is on disk before the plan snapshot and before any other subscriber
        if isinstance(event, ev.StepCommitted):
            self.folder.record_commit(event.step)
        elif isinstance(event, ev.StepUndone):
            self.folder.record_undo(event.index)
        self._plan_writer(event)
        if not isinstance(event, (ev.Progress, ev.MemorySample)):
            record = {"event": type(event).__name__, **dataclasses.asdict(event)}
            self._events.write(json.dumps(record, default=str) + "\n")
            self._events.flush()
        if isinstance(event, ev.Evaluated):
            self._record_evaluation(event)
        if isinstance(event, ev.Finished) and event.plan:
            write_summary(self.folder.path, event.plan, flat_scores(self._evaluation))

    def _record_evaluation(self, event: ev.Evaluated) -> None:
        """``evaluation.json`` and the summary get the latest dense/pruned results."""
        self._evaluation = {
            "dense": event.dense, "pruned": event.pruned, "steps": event.steps,
            "ratio": event.ratio,
        }  # fmt: skip
        write_json_atomic(self.folder.path / "evaluation.json", self._evaluation)
        plan = self._plan()
        if plan:
            write_summary(self.folder.path, plan, flat_scores(self._evaluation))
