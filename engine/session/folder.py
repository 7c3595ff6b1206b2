"""The session folder: what a long run needs so that nothing of it is lost.

``settings.json``   the run request (plain values, ``--out`` and ``--export`` included), written
                    once, atomically
``journal.jsonl``   one line per decision (commit, undo, order switch, guided mode), appended
                    and fsynced before the decision is announced
``plan.json``       a snapshot of the plan, replaced by atomic rename after every change
``events.jsonl``    the event log, a whole line at a time (not fsynced: it is for reading)
``mptui.log``       the log file
``lock``            held (flock) by the one process that owns the session
``channel_order.safetensors``  the L1 channel order taken at the start, so that resume, eval
                    and export re-apply the plan to the very channels the search kept

Resume re-applies the journal: a SIGKILL at any moment loses at most the step being scored,
because a step is on disk before anyone is told it was committed. A folder belongs to one run:
starting a new run in a folder that holds a session is refused.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..control import events as ev
from ..control import wire
from ..errors import BadInput, DiskFull, ResultNotSaved, setting
from ..output.evaluate import flat_scores
from ..recovery.settings import RecoverySettings
from ..search.plan import Plan, PlanStep, read_plan_file
from ..search.run_request import RunRequest
from ..search.settings import CalibrationSpec, PruneSettings
from .disk import append_line, write_json_atomic, writing
from .files import (
    CHANNEL_ORDER,
    EVALUATION,
    EVENTS,
    JOURNAL,
    LOCK,
    LOG,
    PLAN,
    SETTINGS,
    SUMMARY_JSON,
    SUMMARY_MD,
)
from .summary import write_summary

T = TypeVar("T")

#: The files of a session every command on it may read or write, and what each is to the user.
SESSION_FILES = {
    SETTINGS: "settings",
    JOURNAL: "journal",
    PLAN: "plan",
    CHANNEL_ORDER: "channel order",
    LOCK: "lock",
    EVENTS: "event log",
    LOG: "log",
    EVALUATION: "evaluation",
    SUMMARY_JSON: "summary",
    SUMMARY_MD: "summary",
}


@dataclass
class Replay:
    """What the journal says the user decided: the steps kept, and the last order and guided
    mode set while running (None where never changed)."""

    steps: list[PlanStep] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # the journal line of each step
    order: tuple[str, ...] | None = None
    guided: bool | None = None


@dataclass(frozen=True)
class SavedRun:
    """A session's settings.json read back: the request and where its outputs go."""

    request: RunRequest
    out: Path | None
    export: Path | None
    recovery: RecoverySettings | None = None  # what r (or a client's r) recovers with


def _saved_recovery(data: dict) -> RecoverySettings | None:
    """The recovery settings.json keeps (none in a session written before it kept one)."""
    return RecoverySettings.from_dict(data["recovery"]) if data.get("recovery") else None


class SessionFolder:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock_file = None

    def holds_session(self) -> bool:
        return any((self.path / name).exists() for name in (SETTINGS, JOURNAL, PLAN))

    def check_files(self) -> None:
        """One line, before anything is read, locked or written, when the folder is a file
        (``--session FILE``), lies under a file, or one of its files is a directory (or a
        socket, a FIFO): Python would fail on each deep inside a run, with a traceback, and a
        resume would already have written the files it could."""
        for path in (self.path, *self.path.parents):
            if path.exists():
                if path.is_dir():
                    break
                if path == self.path:
                    raise BadInput(f"'{self.path}' is a file, not a session folder")
                raise BadInput(f"'{self.path}' cannot be a session folder: '{path}' is a file")
        for name, role in SESSION_FILES.items():
            path = self.path / name
            if path.exists() and not path.is_file():
                kind = "a directory" if path.is_dir() else "not a regular file"
                raise BadInput(f"{path} is {kind}, where the session keeps its {role} file")

    def refuse_if_taken(self) -> None:
        """A new run never writes into another run's folder (the journals would mix)."""
        self.check_files()
        if self.holds_session():
            raise BadInput(
                f"'{self.path}' already holds a session; continue it with ",
                setting("resume"),
                f" {self.path} or give ",
                setting("session"),
                " a new folder",
            )

    @property
    def order_file(self) -> Path:
        return self.path / CHANNEL_ORDER

    # --- ownership -------------------------------------------------------------------------
    def lock(self, *, claim: bool = True) -> None:
        """Own the session, or fail clearly when another process does. ``claim=False`` holds
        the lock without writing this process's id into it yet (see :meth:`claim`): a resume
        checks the session's files first, and changes none when they are damaged."""
        self.check_files()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = (self.path / LOCK).open("a+")
        except OSError as error:  # a read-only place, no permission
            raise BadInput(
                f"cannot use '{self.path}' as a session folder ({error.strerror})"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise BadInput(f"session {self.path} is in use by {owner}") from None
        self._lock_file = handle
        if claim:
            self.claim()

    def claim(self) -> None:
        """Write this process's id into the held lock, for the line another process gets."""
        handle = self._lock_file
        with writing(self.path / LOCK):
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()}")
            handle.flush()

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # --- settings --------------------------------------------------------------------------
    def write_request(
        self,
        request: RunRequest,
        out: Path | None = None,
        export: Path | None = None,
        recovery: RecoverySettings | None = None,
    ) -> None:
        """``recovery``: the recovery the run was given data for (``--recover-data``), kept so
        that an app attached later, or a resume, can start it."""
        data = {
            "model": request.model,
            "settings": request.settings.to_dict(),
            "dtype": request.dtype,
            "device": request.device,
            "device_map": request.device_map,
            "out": str(out) if out else None,
            "export": str(export) if export else None,
            "recovery": recovery.to_dict() if recovery else None,
        }
        write_json_atomic(self.path / SETTINGS, data)

    def read_run(self, cache_dir: Path | None = None) -> SavedRun:
        """The saved request with the journal's decisions applied: its steps to replay, and the
        order and guided mode the user last chose."""
        self.check_files()
        data, request, recovery = self._settings(
            lambda data: (data, self._request(data, cache_dir), _saved_recovery(data))
        )
        replay = self.read_journal()
        settings = request.settings
        if replay.order is not None:
            settings = settings.with_order(replay.order)
        if replay.guided is not None:
            settings = dataclasses.replace(settings, guided=replay.guided)
        request = dataclasses.replace(request, settings=settings, resume_steps=tuple(replay.steps))
        out, export = data.get("out"), data.get("export")
        return SavedRun(
            request, Path(out) if out else None, Path(export) if export else None, recovery
        )

    def _settings(self, parse: Callable[[dict], T]) -> T:
        """``parse`` of settings.json's data; a missing key or a value of the wrong kind there
        is one line naming the file and the problem."""
        try:
            return parse(json.loads((self.path / SETTINGS).read_text()))
        except FileNotFoundError:
            raise BadInput(f"'{self.path}' is not an mptui session (no {SETTINGS})") from None
        except OSError as error:  # no permission to read it, say
            raise BadInput(f"{self.path / SETTINGS} cannot be read ({error.strerror})") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
            problem = f"no key {error}" if isinstance(error, KeyError) else str(error)
            raise BadInput(
                f"{self.path / SETTINGS} is damaged ({' '.join(problem.split())})"
            ) from None

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
        )

    def read_plan(self) -> Plan:
        """The plan snapshot, for commands that work on a session (eval, export)."""
        self.check_files()
        if not (self.path / PLAN).is_file():
            raise BadInput(f"'{self.path}' is not an mptui session with a plan")
        plan = read_plan_file(self.path / PLAN)
        if (self.path / SETTINGS).is_file():  # a session of the app or a run (not a bare plan)
            model = self._settings(lambda data: data.get("model"))
            if model is not None and plan.model.name_or_path != model:
                raise BadInput(
                    f"{self.path / PLAN} is the plan of another model (its model.name_or_path "
                    f"is {plan.model.name_or_path!r}; this session prunes {model!r})"
                )
        return plan

    # --- the journal -----------------------------------------------------------------------
    def _append(self, record: dict) -> None:
        """One line, fsynced. A torn last line (a kill mid-write) is cut off first, so this
        line starts on a line of its own and every later one is read back."""
        path = self.path / JOURNAL
        if path.exists():
            size = path.stat().st_size
            complete = self._complete_length(path, size) if size else 0
            if complete != size:
                os.truncate(path, complete)
        append_line(path, json.dumps(record) + "\n", fsync=True)

    @staticmethod
    def _complete_length(path: Path, size: int) -> int:
        """Bytes of ``path`` up to and including its last newline."""
        with path.open("rb") as handle:
            handle.seek(max(0, size - 1))
            if handle.read(1) == b"\n":
                return size
            data = path.read_bytes()
        return data.rfind(b"\n") + 1

    def record_commit(self, step: PlanStep) -> None:
        self._append({"commit": step.to_dict()})

    def record_undo(self, index: int) -> None:
        self._append({"undo": index})

    def record_order(self, order: Sequence[str]) -> None:
        self._append({"order": list(order)})

    def record_guided(self, guided: bool) -> None:
        self._append({"guided": guided})

    def read_journal(self) -> Replay:
        """Replay commits, undos, order switches and guided mode. A torn last line (the process
        died while writing it: no newline after it) is ignored; any other line that is not a
        record is damage, named by its number."""
        replay = Replay()
        path = self.path / JOURNAL
        if not path.exists():
            return replay
        try:
            text = path.read_text(errors="replace")
        except OSError as error:  # a directory, no permission
            raise BadInput(f"{path} cannot be read ({error.strerror})") from None
        lines = text.splitlines()
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as error:
                if number == len(lines) and not text.endswith("\n"):
                    break
                raise BadInput(f"{path} line {number} is not a journal record ({error})") from None
            if "commit" in record:
                replay.steps.append(self._journal_step(record["commit"], number))
                replay.lines.append(number)
            elif "undo" in record and replay.steps and replay.steps[-1].index == record["undo"]:
                replay.steps.pop()
                replay.lines.pop()
            elif "order" in record:
                replay.order = tuple(record["order"])
            elif "guided" in record:
                replay.guided = bool(record["guided"])
        return replay

    def _journal_step(self, data: dict, number: int) -> PlanStep:
        try:
            return PlanStep.from_dict(data)
        except KeyError as error:
            problem = f"a commit without {error.args[0]!r}"
        except (TypeError, ValueError, AttributeError) as error:
            problem = " ".join(str(error).split())
        raise BadInput(f"{self.path / JOURNAL} line {number} is damaged ({problem})")


class SessionRecorder:
    """Subscriber that keeps the session's event log, evaluation and summary up to date."""

    def __init__(self, folder: SessionFolder, plan: Callable[[], Plan | None]) -> None:
        self.folder = folder
        self._plan = plan
        self._evaluation: dict = {}

    def __call__(self, event: ev.Event) -> None:
        # the journal and plan.json are written by the engine, before any event is sent
        if not isinstance(event, (ev.Progress, ev.MemorySample)):
            # the wire's values, not asdict's: a PlanStep is logged as plan.json's entry
            record = {"event": type(event).__name__, **wire.encode_value(event)}
            append_line(self.folder.path / EVENTS, json.dumps(record, default=str) + "\n",
                        fsync=False)  # fmt: skip
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
        if event.recovered:
            self._evaluation["recovered"] = event.recovered
        try:
            write_json_atomic(self.folder.path / EVALUATION, self._evaluation)
            plan = self._plan()
            if plan:
                write_summary(self.folder.path, plan, flat_scores(self._evaluation))
        except DiskFull as error:
            raise ResultNotSaved(f"the evaluation is shown but not saved: {error}") from None
