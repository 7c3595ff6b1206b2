"""The engine thread: loads, then runs its phases as an explicit state machine.

The state is one :class:`~.control.events.EngineState`. Commands arrive on a thread-safe queue
and go through one dispatcher, :meth:`Engine._dispatch`, which looks the command up in the
current state in :mod:`.control.command_table` (the table docs/engine.md prints) and hands it to
the phase it concerns: the search (:class:`~.search.phase.SearchPhase`, which reads the queue
between candidate evaluations and blocks on it while paused or waiting for the user), the
recovery (:class:`~.recovery.phase.RecoveryPhase`, between optimizer steps), an export
(:class:`~.output.export_phase.ExportPhase`) or an evaluation
(:class:`~.output.evaluation_phase.EvaluationPhase`). Any exception becomes an ``Error`` event
followed by a clean stop: the thread never dies silently.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from .control import command_table
from .control import commands as cmd
from .control import events as ev
from .control.commands import Outcome
from .control.events import EngineState
from .control.subscribers import Subscriber, Subscribers
from .errors import Cancelled, DiskFull, EngineError, Message, resume
from .model.device_failure import device_failed, is_device_failure
from .model.memory import MemorySampler
from .output.evaluation_phase import EvaluationPhase
from .output.export_phase import ExportPhase
from .recovery.phase import RecoveryPhase
from .recovery.run import RecoveryRun
from .recovery.settings import RecoverySettings
from .search.phase import Journal, SearchPhase
from .search.plan import Plan
from .search.pruning import Pruning
from .search.run_request import RunRequest
from .search.setup import build_pruning
from .search.step_work import scoring_for
from .workers.team import Team

log = logging.getLogger("mptui.engine")


class Engine:
    """Runs one pruning run. ``start()`` for a thread, ``run()`` to run in the caller's."""

    def __init__(
        self,
        request: RunRequest,
        subscribers: list[Subscriber] | None = None,
        *,
        linger: bool = False,
        journal: Journal | None = None,
        plan_dirs: Sequence[Path] = (),
        loaded: tuple | None = None,
        team: Team | None = None,
        session_dir: Path | None = None,
        recover: RecoverySettings | None = None,
    ) -> None:
        """``linger``: after the search, answer exports and evaluations until a Stop (the app).
        ``journal`` records every decision before it is announced; ``plan_dirs`` get plan.json
        after every change. ``loaded``: a model and tokenizer in memory (benchmarks, tests).
        ``team``: this leads a multi-worker run (engine/workers/team.py). ``session_dir``: where
        a recovery keeps its state; ``recover``: go straight to that recovery once loaded."""
        self.request = request
        self.linger = linger
        self._session_dir = session_dir
        self._journal = journal
        self._plan_dirs = tuple(Path(d) for d in plan_dirs)
        self._loaded = loaded
        self._team = team
        self._stop_requested = threading.Event()
        # a subscriber that cannot keep the session (a full disk) ends the run
        self._subscribers = Subscribers(subscribers or [], on_lost=lambda _: self.send(cmd.Stop()))
        self.emit = self._subscribers.emit
        self.emit_memory = MemorySampler(self.emit)
        self._commands: queue.Queue[cmd.Command] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._state = EngineState.LOADING
        self.paused_from = EngineState.RUNNING  # where Resume goes back to
        self.pruning: Pruning | None = None
        self.result: ev.Finished | None = None
        self.failure: BaseException | None = None  # what ended the run in error, if anything
        self._recover_at_start = recover
        self._search: SearchPhase | None = None
        self._recovery = RecoveryPhase(request, session_dir, self.emit, self.set_state)
        self._export = ExportPhase(self.emit, self.failing_as)
        self._evaluation = EvaluationPhase(self.emit, self.failing_as, self._stop_requested.is_set)

    # --- caller side --------------------------------------------------------------------------
    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def recovery(self) -> RecoveryRun | None:
        """The recovery, once one has started."""
        return self._recovery.current

    def plan(self) -> Plan | None:
        """The plan so far (call from a subscriber, which runs on the engine thread)."""
        return self.pruning.plan() if self.pruning is not None else None

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)

    def send(self, command: cmd.Command) -> None:
        """Queue ``command``; safe from any thread (and from a signal handler)."""
        if isinstance(command, cmd.Stop):
            self._stop_requested.set()  # seen by long work (loading, an evaluation) at once
        self._commands.put(command)

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="mptui-engine", daemon=True)
        self._thread.start()
        return self._thread

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    # --- engine thread: the run -----------------------------------------------------------------
    def run(self) -> ev.Finished:
        """The run, then (lingering) the answers to exports and evaluations until a Stop.
        ``StateChanged(ENDED)`` is the last event whatever happened: from then on nothing reads
        a command, and every reader (an attached client too) can know it."""
        try:
            return self._run()
        finally:
            self.set_state(EngineState.ENDED)

    def _run(self) -> ev.Finished:
        reason = self._load_and_run_phases()
        failed = [self._subscribers.lost]  # a subscriber that could not keep the session
        plan = self.pruning.plan() if self.pruning else None
        if plan is not None and self._search is not None:
            try:
                self._search.save_plan(plan)
            except DiskFull as error:  # the journal has every step: a resume rebuilds the plan
                failed.append(error)
        for error in filter(None, failed):  # said last; the first one ends the run in error
            if reason is not EngineState.ERROR:
                reason, self.failure = EngineState.ERROR, error
                self.emit(ev.Error.of(self._with_resume_hint(error)))
        self.set_state(reason)
        self.result = ev.Finished(reason=reason.value, plan=plan.to_dict() if plan else {})
        self.emit(self.result)
        if self.linger and reason is not EngineState.STOPPED:
            try:
                while self._dispatch(self._commands.get()) is not Outcome.STOP:
                    pass  # the search is over; exports and evaluations are still answered
            except Exception as error:  # a lost device while exporting, say: end, and say so
                self._fail(error)
                self.set_state(EngineState.ERROR)
        if self._search is not None:
            self._search.scoring.close()
        return self.result

    def _load_and_run_phases(self) -> EngineState:
        """Load, then search (or go straight to a resumed recovery); the state the run ends in."""
        try:
            self.set_state(EngineState.LOADING)
            self.emit(ev.GuidedChanged(self.request.settings.guided))
            with self.failing_as("loading the model"):
                self.pruning = build_pruning(
                    self.request, self.emit, self._loaded, interrupt=self._interrupt_if_stopped,
                    team=self._team,
                )  # fmt: skip
            scoring = scoring_for(self.pruning, self._team, self._interrupt_if_stopped)
            self._search = SearchPhase(
                self, self.pruning, scoring, guided=self.request.settings.guided,
                journal=self._journal, plan_dirs=self._plan_dirs,
            )  # fmt: skip
            self.emit_memory(force=True)
            if self._recover_at_start is not None:  # a resumed recovery: no further search
                return self._recover(self._recover_at_start) or EngineState.STOPPED
            return self._search.run()
        except Cancelled:
            return EngineState.STOPPED
        except Exception as error:  # the thread must never die silently
            self._fail(error)
            return EngineState.ERROR

    def _fail(self, error: Exception) -> None:
        """Record what ended the run and tell the subscribers in one line (called from an
        ``except`` block, whose traceback goes to the log when the error is not the engine's)."""
        if not isinstance(error, EngineError) and is_device_failure(error):
            error = device_failed(error, "running", self._session_dir)
        self.failure = error
        if isinstance(error, EngineError):
            self.emit(ev.Error.of(self._with_resume_hint(error)))
        else:
            log.exception("engine failed")
            self.emit(ev.Error(f"{type(error).__name__}: {error}"))

    @contextlib.contextmanager
    def failing_as(self, what: str) -> Iterator[None]:
        """A lost device inside the block becomes :class:`DeviceFailed`, saying ``what`` the
        engine was doing; an out-of-memory or any other error passes through as it is."""
        try:
            yield
        except RuntimeError as error:
            if not is_device_failure(error):
                raise
            raise device_failed(error, what, self._session_dir) from error

    def _with_resume_hint(self, error: EngineError) -> Message:
        """A full disk's line ends with what to do once space is freed."""
        if isinstance(error, DiskFull) and self._session_dir is not None:
            return Message.of(error, ": free space, then continue with ", resume(self._session_dir))
        return error.message

    def _interrupt_if_stopped(self) -> None:
        if self._stop_requested.is_set():
            raise Cancelled("stopped while loading")

    # --- commands -------------------------------------------------------------------------------
    def poll(self) -> Outcome:
        """Handle every queued command; while paused, wait here for the one that resumes.

        Returns STOP, else CHANGED when any command changed the model, else NOTHING.
        """
        result = Outcome.NOTHING
        while True:
            try:
                command = self._commands.get(block=self.state.is_paused)
            except queue.Empty:
                return result
            outcome = self._dispatch(command)
            if outcome is Outcome.STOP:
                return outcome
            if outcome is Outcome.CHANGED:
                result = outcome

    def dispatch_next(self) -> Outcome:
        """Wait for the next command and handle it (guided mode, a proposal waiting)."""
        return self._dispatch(self._commands.get())

    def _dispatch(self, command: cmd.Command) -> Outcome:
        """The one place a command is acted on, as :mod:`.control.command_table` says for the
        state, by the phase it concerns."""
        rule = command_table.rule(command, self.state)
        if not rule.acts:
            if rule.notice is not None:
                self.emit(ev.Notice.of(rule.notice))
            return Outcome.NOTHING
        if isinstance(command, cmd.Stop):
            return Outcome.STOP
        search, pruning = self._search, self.pruning
        if search is None or pruning is None:  # lingering after a failed load
            self.emit(ev.Notice("the model did not load; there is nothing to work on"))
            return Outcome.NOTHING
        if isinstance(command, cmd.Pause):
            return self._pause(search)
        if isinstance(command, cmd.Resume):
            paused_recovery = self.state is EngineState.RECOVERY_PAUSED
            self.set_state(EngineState.RECOVERING if paused_recovery else self.paused_from)
            return Outcome.NOTHING
        if isinstance(command, cmd.Export):
            self._export.run(pruning, self.recovery, command)
            return Outcome.NOTHING
        if isinstance(command, cmd.Evaluate):
            finished = self._evaluation.run(pruning, self.recovery, command.request)
            return Outcome.NOTHING if finished else Outcome.STOP
        if isinstance(command, cmd.Recover):  # here, on the engine thread, until done or stopped
            end = self._recover(command.settings)
            return Outcome.STOP if end is EngineState.STOPPED else Outcome.NOTHING
        return search.steer(command)

    def _pause(self, search: SearchPhase) -> Outcome:
        if self.state is EngineState.RECOVERING:
            self.set_state(EngineState.RECOVERY_PAUSED)
            return Outcome.NOTHING
        self.paused_from = self.state
        self.set_state(EngineState.PAUSED)
        search.hold()  # followers stop after the candidate in hand
        return Outcome.NOTHING

    def _recover(self, settings: RecoverySettings) -> EngineState | None:
        """The state the recovery (docs/method.md §10) left the run in, or None when it did
        not start."""
        return self._recovery.run(self.pruning, settings, poll=lambda: self.poll() is Outcome.STOP)

    # --- events -----------------------------------------------------------------------------------
    def set_state(self, state: EngineState) -> None:
        self._state = state
        self.emit(ev.StateChanged(state))


__all__ = ["Engine", "Journal", "Outcome", "RunRequest"]
