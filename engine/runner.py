"""The engine thread: loads, then runs the greedy search as an explicit state machine.

The state is one :class:`~.events.EngineState`. Commands arrive on a thread-safe queue and go
through one dispatcher, :meth:`Engine._dispatch`, which looks the command up in the current
state in :mod:`.command_table` (the table docs/engine.md prints) and returns an
:class:`Outcome`; the search loop reads the queue between candidate evaluations, and blocks on
it while paused or waiting for the user. The recovery after the search is a phase of its own
(:class:`~.recovery.phase.RecoveryPhase`) that reads the same queue between optimizer steps.

Every change of the model (a commit or an undo) is made whole before anyone hears of it: the
weights, the counts, the journal line and plan.json, then the event. Any exception becomes an
``Error`` event followed by a clean stop: the thread never dies silently.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Protocol

from .control import command_table
from .control import commands as cmd
from .control import events as ev
from .control.events import ActivityKind, EngineState
from .errors import BadInput, Cancelled, DeviceFailed, DiskFull, EngineError, ResultNotSaved
from .model.device_failure import device_failed, is_device_failure
from .model.memory import sample_memory
from .output.eval_request import EvalRequest
from .output.evaluate import evaluate
from .output.export_phase import ExportPhase
from .recovery.phase import RecoveryPhase
from .recovery.run import RecoveryRun
from .recovery.settings import RecoverySettings
from .search.fast_search import Evaluation
from .search.plan import Plan, PlanStep, write_plan
from .search.pruning import PruningSession, StepStats
from .search.run_request import RunRequest
from .search.setup import build_session
from .search.step_work import LocalScoring, Scoring, StepWork, TeamScoring
from .search.structures import Structure
from .session.files import PLAN
from .workers import directives as dv
from .workers.team import Team

log = logging.getLogger("mptui.engine")

Subscriber = Callable[[ev.Event], None]

#: Seconds between memory samples while scoring.
MEMORY_INTERVAL = 1.0
#: Seconds between progress reports of a long activity (an evaluation).
ACTIVITY_INTERVAL = 0.25


class Outcome(Enum):
    """What handling a command did to the run."""

    NOTHING = "nothing"  # no change the step in progress cares about
    CHANGED = "changed"  # the model changed (a commit or an undo): the step starts afresh
    STOP = "stop"  # the run ends here


class Journal(Protocol):
    """Where decisions are made durable before they are announced (the session folder)."""

    def record_commit(self, step: PlanStep) -> None: ...
    def record_undo(self, index: int) -> None: ...
    def record_order(self, order: Sequence[str]) -> None: ...
    def record_guided(self, guided: bool) -> None: ...


@dataclass
class _Proposal:
    """Guided mode: the step's best candidate, waiting for the user."""

    structure: Structure
    score: float
    stats: StepStats


class Engine:
    """Runs one pruning session. ``start()`` for a thread, ``run()`` to run in the caller's."""

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
        """``linger``: after the search, keep answering exports and evaluations until a Stop
        (the app, where the user looks at the result before quitting). ``journal`` records every
        decision before it is announced; ``plan_dirs`` get plan.json after every change.
        ``loaded``: a model and tokenizer already in memory (benchmarks, tests). ``team``: this
        is the leader of a multi-worker run (engine/workers/team.py), whose followers score with it.
        ``session_dir``: where a recovery keeps its state; ``recover``: go straight to that
        recovery once loaded, without searching further (a resumed recovery)."""
        self.request = request
        self.linger = linger
        self._session_dir = session_dir
        self._journal = journal
        self._plan_dirs = tuple(Path(d) for d in plan_dirs)
        self._loaded = loaded
        self._team = team
        self._scoring: Scoring | None = None
        self._work: StepWork | None = None  # the step being scored
        self._dense_results: dict[EvalRequest, dict] = {}
        self._stop_requested = threading.Event()
        self._subscribers: list[Subscriber] = list(subscribers or [])
        self._commands: queue.Queue[cmd.Command] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._state = EngineState.LOADING
        self._paused_from = EngineState.RUNNING  # where Resume goes back to
        self._guided = request.settings.guided
        self._proposal: _Proposal | None = None
        self._step_scores: dict[Structure, float] = {}  # this step's scores, for an override
        self._last_memory = 0.0
        self.session: PruningSession | None = None
        self.result: ev.Finished | None = None
        self.failure: BaseException | None = None  # what ended the run in error, if anything
        self._write_failure: EngineError | None = None  # a subscriber's, ending the run
        self._recover_at_start = recover
        self._recovery = RecoveryPhase(request, session_dir, self._emit, self._set_state)
        self._export = ExportPhase(self._emit, self._failing_as)

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
        return self.session.plan() if self.session is not None else None

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

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
            self._set_state(EngineState.ENDED)

    def _run(self) -> ev.Finished:
        reason = EngineState.DONE
        try:
            self._set_state(EngineState.LOADING)
            self._emit(ev.GuidedChanged(self._guided))
            with self._failing_as("loading the model"):
                self.session = build_session(
                    self.request,
                    self._emit,
                    self._loaded,
                    interrupt=self._interrupt_if_stopped,
                    team=self._team,
                )
            self._scoring = self._new_scoring(self.session)
            self._emit_memory(force=True)
            if self._recover_at_start is not None:  # a resumed recovery: no further search
                reason = self._recover(self._recover_at_start) or EngineState.STOPPED
            else:
                reason = self._search()
        except Cancelled:
            reason = EngineState.STOPPED
        except Exception as error:  # the thread must never die silently
            reason = EngineState.ERROR
            self._fail(error)
        if self._write_failure is not None and reason is not EngineState.ERROR:
            reason = EngineState.ERROR  # a subscriber could not keep the session: say so last
            self.failure = self._write_failure
            self._emit(ev.Error(self._with_resume_hint(self._write_failure)))
        plan = self.session.plan() if self.session else None
        if plan is not None:
            try:
                self._save_plan(plan)
            except DiskFull as error:  # the journal has every step: a resume rebuilds the plan
                if reason is not EngineState.ERROR:
                    reason, self.failure = EngineState.ERROR, error
                    self._emit(ev.Error(self._with_resume_hint(error)))
        self._set_state(reason)
        self.result = ev.Finished(reason=reason.value, plan=plan.to_dict() if plan else {})
        self._emit(self.result)
        if self.linger and reason is not EngineState.STOPPED:
            try:
                self._serve_after_search()
            except Exception as error:  # a lost device while exporting, say: end, and say so
                self._fail(error)
                self._set_state(EngineState.ERROR)
        if self._scoring is not None:
            self._scoring.close()
        return self.result

    def _fail(self, error: Exception) -> None:
        """Record what ended the run and tell the subscribers in one line (called from an
        ``except`` block, whose traceback goes to the log when the error is not the engine's)."""
        if not isinstance(error, EngineError) and is_device_failure(error):
            error = device_failed(error, "running", self._session_dir)
        self.failure = error
        if isinstance(error, EngineError):
            self._emit(ev.Error(self._with_resume_hint(error)))
        else:
            log.exception("engine failed")
            self._emit(ev.Error(f"{type(error).__name__}: {error}"))

    @contextlib.contextmanager
    def _failing_as(self, what: str) -> Iterator[None]:
        """A lost device inside the block becomes :class:`DeviceFailed`, saying ``what`` the
        engine was doing; an out-of-memory or any other error passes through as it is."""
        try:
            yield
        except RuntimeError as error:
            if not is_device_failure(error):
                raise
            raise device_failed(error, what, self._session_dir) from error

    def _with_resume_hint(self, error: EngineError) -> str:
        """A full disk's line ends with what to do once space is freed."""
        if isinstance(error, DiskFull) and self._session_dir is not None:
            return f"{error}: free space, then continue with mptui --resume {self._session_dir}"
        return str(error)

    def _new_scoring(self, session: PruningSession) -> Scoring:
        if self._team is None:
            return LocalScoring(session)
        return TeamScoring(self._team, session, self._interrupt_if_stopped)

    def _interrupt_if_stopped(self) -> None:
        if self._stop_requested.is_set():
            raise Cancelled("stopped while loading")

    def _search(self) -> EngineState:
        session = self.session
        assert session is not None
        dimension = None
        self._set_state(EngineState.RUNNING)
        while True:
            if self._poll() is Outcome.STOP:
                return EngineState.STOPPED
            current = session.current_dimension()
            if current != dimension:
                dimension = current
                target = session.settings.targets().get(current) if current else None
                self._emit(ev.DimensionChanged(current, target, session.settings.order))
            if current is None:
                return EngineState.DONE
            if self._step(current) is Outcome.STOP:
                return EngineState.STOPPED

    def _step(self, dimension: str) -> Outcome:
        """Score every candidate of ``dimension`` and commit (or propose) the best.

        Returns early when a command changed the model (the caller starts a fresh step) or
        stopped the run.
        """
        session = self.session
        assert session is not None
        candidates = session.eligible(dimension)
        step = len(session.steps) + 1
        with self._failing_as(f"scoring the model before step {step}"):
            current = session.current_score(dimension)
        self._emit(ev.StepStarted(step, dimension, tuple(c.id for c in candidates), current))
        self._step_scores = scores = {}  # fully scored candidates only (all of them when exact)
        stats, started = StepStats(), time.monotonic()
        scorer = session.scorers[dimension]
        self._work = work = self._scoring.begin(dimension, candidates)
        try:
            while not work.finished:
                outcome = self._poll()
                if outcome is not Outcome.NOTHING:
                    work.abandon()
                    return outcome
                with self._failing_as(
                    f"scoring candidate {stats.candidates + 1} of {len(candidates)} in step {step}"
                ):
                    results = work.advance()
                for result in results:
                    if result.fully_scored:
                        scores[result.candidate] = result.score
                    stats.candidates += int(result.round == 1)
                    stats.tokens += result.new_rows * scorer.chunks.shape[1]
                    self._report_scored(step, result, current, stats, started)
        finally:
            self._work = None
        stats.seconds = time.monotonic() - started
        scores = {c: scores[c] for c in candidates if c in scores}  # canonical order breaks ties
        best = self._best(scores)
        if best is None:
            return self._pause_for_non_finite(dimension)
        if self._guided:
            return self._await_decision(step, _Proposal(best, scores[best], stats))
        self._commit(best, scores[best], "engine", stats)
        return Outcome.CHANGED

    def _report_scored(
        self, step: int, result: Evaluation, current: float, stats: StepStats, started: float
    ) -> None:
        candidate, k, n = result.candidate, result.k, result.n
        elapsed = time.monotonic() - started
        self._emit(
            ev.CandidateScored(
                step, candidate.dimension, candidate.id, result.score, result.score - current,
                self.session.params_freed(candidate), k, n, result.rows, result.total_rows,
            )
        )  # fmt: skip
        self._emit(
            ev.Progress(step, k, n, stats.tokens / max(elapsed, 1e-9), elapsed / k * (n - k))
        )
        self._emit_memory()

    def _best(self, scores: dict[Structure, float]) -> Structure | None:
        """The lowest finite score, the first in canonical order on ties; a NaN or inf ranks
        last (with a warning), never wins."""
        finite = {c: s for c, s in scores.items() if math.isfinite(s)}
        for candidate in scores.keys() - finite.keys():
            self._emit(ev.Notice(f"{candidate.id} scored {scores[candidate]}; ranked last"))
        return min(finite, key=finite.__getitem__) if finite else None

    def _pause_for_non_finite(self, dimension: str) -> Outcome:
        dtype = (self.session.plan().model.dtype if self.session else None) or "?"
        self._emit(
            ev.Notice(
                f"every {dimension} candidate scored NaN or inf, so nothing was committed; "
                f"paused. With {dtype} this is usually an overflow: run again with --dtype "
                "bfloat16 or float32, or override, undo or change the order now"
            )
        )
        self._paused_from = EngineState.RUNNING
        self._set_state(EngineState.PAUSED)
        return Outcome.NOTHING

    def _await_decision(self, step: int, proposal: _Proposal) -> Outcome:
        """Guided mode: wait until Accept, an Override or an Undo settles the step."""
        self._proposal = proposal
        self._emit(ev.Proposal(step, proposal.structure.id, proposal.score))
        self._set_state(EngineState.WAITING)
        while self._proposal is proposal:
            if not self._guided and self._state is EngineState.WAITING:
                return self._accept()  # guided mode was turned off: the engine decides
            if self._dispatch(self._commands.get()) is Outcome.STOP:
                return Outcome.STOP
        return Outcome.CHANGED

    def _serve_after_search(self) -> None:
        """The search is over; exports and evaluations are still answered until a Stop."""
        while self._dispatch(self._commands.get()) is not Outcome.STOP:
            pass

    # --- commands -------------------------------------------------------------------------------
    def _poll(self) -> Outcome:
        """Handle every queued command; while paused, wait here for the one that resumes.

        Returns STOP, else CHANGED when any command changed the model, else NOTHING.
        """
        result = Outcome.NOTHING
        while True:
            try:
                command = self._commands.get(block=self._state.is_paused)
            except queue.Empty:
                return result
            outcome = self._dispatch(command)
            if outcome is Outcome.STOP:
                return outcome
            if outcome is Outcome.CHANGED:
                result = outcome

    def _dispatch(self, command: cmd.Command) -> Outcome:
        """The one place a command is acted on, as :mod:`.command_table` says for the state."""
        rule = command_table.rule(command, self._state)
        if not rule.acts:
            if rule.notice is not None:
                self._emit(ev.Notice(rule.notice))
            return Outcome.NOTHING
        if isinstance(command, cmd.Stop):
            return Outcome.STOP
        if self.session is None:  # lingering after a failed load
            self._emit(ev.Notice("the model did not load; there is nothing to work on"))
            return Outcome.NOTHING
        handler = {
            cmd.Pause: self._on_pause,
            cmd.Resume: self._on_resume,
            cmd.Override: self._on_override,
            cmd.Accept: self._on_accept,
            cmd.SetOrder: self._on_set_order,
            cmd.SetGuided: self._on_set_guided,
            cmd.Undo: self._on_undo,
            cmd.Export: self._on_export,
            cmd.Evaluate: self._on_evaluate,
            cmd.Recover: self._on_recover,
        }[type(command)]
        return handler(command)

    def _on_pause(self, _command: cmd.Pause) -> Outcome:
        if self._state is EngineState.RECOVERING:
            self._set_state(EngineState.RECOVERY_PAUSED)
            return Outcome.NOTHING
        self._paused_from = self._state
        self._set_state(EngineState.PAUSED)
        if self._work is not None:
            self._work.hold()  # followers stop after the candidate in hand
        return Outcome.NOTHING

    def _on_resume(self, _command: cmd.Resume) -> Outcome:
        if self._state is EngineState.RECOVERY_PAUSED:
            self._set_state(EngineState.RECOVERING)
        else:
            self._set_state(self._paused_from)
        return Outcome.NOTHING

    def _on_override(self, command: cmd.Override) -> Outcome:
        """Commit the user's structure now (between two candidates when running)."""
        try:
            structure = self.session.structure_from_id(command.structure)
        except BadInput as error:
            self._emit(ev.Notice(f"override ignored: {error}"))
            return Outcome.NOTHING
        started = time.monotonic()
        score = self._step_scores.get(structure)
        if score is None:
            with self._failing_as(f"scoring {structure.id} (an override)"):
                score = self.session.score_candidate(structure)
        tokens = self.session.scorer_for(structure).tokens
        self._commit(structure, score, "user", StepStats(time.monotonic() - started, 1, tokens))
        return Outcome.CHANGED

    def _on_accept(self, _command: cmd.Accept) -> Outcome:
        if self._proposal is None:
            self._emit(ev.Notice("nothing to accept: no proposal is waiting"))
            return Outcome.NOTHING
        return self._accept()

    def _accept(self) -> Outcome:
        proposal = self._proposal
        assert proposal is not None
        self._commit(proposal.structure, proposal.score, "engine", proposal.stats)
        return Outcome.CHANGED

    def _on_set_order(self, command: cmd.SetOrder) -> Outcome:
        session = self.session
        try:
            settings = session.settings.with_order(tuple(command.order))
        except BadInput as error:
            self._emit(ev.Notice(f"order not changed: {error}"))
            return Outcome.NOTHING
        if self._journal is not None:
            self._journal.record_order(settings.order)
        session.settings = settings
        self._scoring.mirror(dv.Order(settings.order))
        self._save_plan()
        self._emit(ev.Notice(f"order is now {' -> '.join(settings.order)} (from the next step)"))
        return Outcome.NOTHING

    def _on_set_guided(self, command: cmd.SetGuided) -> Outcome:
        if self._journal is not None:
            self._journal.record_guided(command.guided)
        self._guided = command.guided
        self._emit(ev.GuidedChanged(command.guided))
        return Outcome.NOTHING

    def _on_undo(self, _command: cmd.Undo) -> Outcome:
        """Undo the last removal: one step, or both sub-blocks of a layer method's layer."""
        session = self.session
        if not session.steps:
            self._emit(ev.Notice("nothing to undo"))
            return Outcome.NOTHING
        for _ in range(session.last_removal()):
            self._undo_step()
        return Outcome.CHANGED

    def _undo_step(self) -> None:
        session = self.session
        with self._failing_as(f"undoing step {len(session.steps)}"):
            step = session.undo()
        try:
            if self._journal is not None:
                self._journal.record_undo(step.index)
        except BaseException:
            self._recommit(step)  # not on disk: the undo did not happen
            raise
        self._scoring.mirror(dv.UndoCommit())
        self._settled()
        self._save_plan()
        structure = step.structure
        self._emit(
            ev.StepUndone(
                step.index, structure.id, session.current_score(structure.dimension),
                session.ratio(),
            )
        )  # fmt: skip
        self._scoring.verify(step.index)

    # --- changes to the model -------------------------------------------------------------------
    def _commit(self, structure: Structure, score: float, chosen_by: str, stats: StepStats) -> None:
        """Commit ``structure`` as its parts, each a step of its own (a layer is its attention,
        then its MLP sub-block). ``score`` belongs to the last part; an earlier part is scored
        on its own first, so every step's score is the perplexity after that step.

        The cost is booked where it is paid: the ranking that chose ``structure`` (``stats``)
        ran in the step of its first part, with that part's own scoring; a later part's score
        came with the ranking, so its step costs nothing."""
        *earlier, last = structure.parts
        for part in earlier:
            started = time.monotonic()
            with self._failing_as(f"scoring {part.id}, the first part of {structure.id}"):
                part_score = self.session.score_candidate(part)
            tokens = self.session.scorer_for(part).tokens
            paid = StepStats(
                stats.seconds + time.monotonic() - started,
                stats.candidates + 1,
                stats.tokens + tokens,
            )
            self._commit_step(part, part_score, chosen_by, paid)
            stats = StepStats()
        self._commit_step(last, score, chosen_by, stats)

    def _commit_step(
        self, structure: Structure, score: float, chosen_by: str, stats: StepStats
    ) -> None:
        """Weights, counts, journal, plan.json, then the event: all of it or none of it."""
        session = self.session
        assert session is not None
        with self._failing_as(f"committing {structure.id} as step {len(session.steps) + 1}"):
            step = session.commit(structure, score, chosen_by, stats)
        try:
            if self._journal is not None:
                self._journal.record_commit(step)
        except BaseException:
            session.undo()  # not on disk: the commit did not happen
            raise
        self._scoring.mirror(dv.Commit(structure.id, score, chosen_by))
        self._settled()
        self._save_plan()
        self._emit(
            ev.StepCommitted(
                step.to_dict(), score, session.ratio(), session.ratio_layers, session.params,
                stats.seconds, stats.candidates, stats.tokens,
            )
        )  # fmt: skip
        self._emit_memory(force=True)
        self._scoring.verify(step.index)

    def _recommit(self, step: PlanStep) -> None:
        self.session.commit(step.structure, step.score, step.chosen_by)
        self.session.steps[-1] = step

    def _settled(self) -> None:
        """A commit or undo settles the step in progress: its scores and proposal are stale."""
        self._step_scores = {}
        if self._proposal is not None:
            self._proposal = None
            if self._state is EngineState.WAITING:
                self._set_state(EngineState.RUNNING)
        if self._paused_from is EngineState.WAITING:
            self._paused_from = EngineState.RUNNING

    def _save_plan(self, plan: Plan | None = None) -> None:
        if not self._plan_dirs or self.session is None:
            return
        plan = plan or self.session.plan()
        for folder in self._plan_dirs:
            write_plan(folder / PLAN, plan)

    # --- recovery (docs/method.md §10) ---------------------------------------------------------
    def _on_recover(self, command: cmd.Recover) -> Outcome:
        """Runs here, on the engine thread, until done or stopped; a stop ends the run."""
        end = self._recover(command.settings)
        return Outcome.STOP if end is EngineState.STOPPED else Outcome.NOTHING

    def _recover(self, settings: RecoverySettings) -> EngineState | None:
        """The state the recovery left the run in, or None when it did not start."""
        return self._recovery.run(self.session, settings, poll=lambda: self._poll() is Outcome.STOP)

    # --- long side work -------------------------------------------------------------------------
    def _on_export(self, command: cmd.Export) -> Outcome:
        """Written between two candidates (or optimizer steps); see :class:`ExportPhase`."""
        self._export.run(self.session, self.recovery, command)
        return Outcome.NOTHING

    def _on_evaluate(self, command: cmd.Evaluate) -> Outcome:
        """Dense (once per request: undo all, score, redo) and pruned, side by side."""
        session, request = self.session, command.request
        try:
            with self._failing_as("evaluating"):
                dense, pruned, recovered = self._evaluations(request)
        except Cancelled:
            self._emit(ev.Notice("evaluation cancelled: the run was told to stop"))
            return Outcome.STOP
        except DeviceFailed:
            raise  # the device is gone: the run ends
        except EngineError as error:
            self._emit(ev.Notice(f"evaluation failed: {error}"))
            return Outcome.NOTHING
        finally:
            self._emit(ev.Activity(None))
        self._emit(ev.Evaluated(dense, pruned, len(session.steps), session.ratio(), recovered))
        return Outcome.NOTHING

    def _evaluations(self, request: EvalRequest) -> tuple[dict, dict, dict]:
        """The dense, pruned and (once recovered) recovered model's results."""
        session = self.session
        request.check()
        dense = self._dense_results.get(request)
        if dense is None:
            with session.dense_model() as model:
                dense = self._evaluate_one("the dense model", model, request)
            self._dense_results[request] = dense
        pruned = self._evaluate_one("the pruned model", session.model, request)
        recovered = {}
        if self.recovery is not None:
            model = self.recovery.merged()
            recovered = self._evaluate_one("the recovered model", model, request)
            del model
        return dense, pruned, recovered

    def _evaluate_one(self, what: str, model, request: EvalRequest) -> dict:
        """One model through lm-eval, its requests done out of total on the status line (a few
        times a second at most, and always the last)."""
        label = f"evaluating {what}"
        self._emit(ev.Activity(ActivityKind.EVALUATION, label))
        last = 0.0

        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if done == total or now - last >= ACTIVITY_INTERVAL:
                last = now
                self._emit(ev.Activity(ActivityKind.EVALUATION, label, done, total))

        return evaluate(
            model, self.session.tokenizer, request, self._stop_requested.is_set, progress
        )

    # --- events -----------------------------------------------------------------------------------
    def _set_state(self, state: EngineState) -> None:
        self._state = state
        self._emit(ev.StateChanged(state))

    def _emit(self, event: ev.Event) -> None:
        event = replace(event, time=time.monotonic())
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except ResultNotSaved as error:  # the run goes on; the user is told
                self._emit(ev.Notice(str(error)))
            except EngineError as error:  # the session cannot be kept (a full disk): end the run
                if self._write_failure is None:
                    self._write_failure = error
                    self.send(cmd.Stop())
            except Exception:
                log.exception("event subscriber failed on %s", type(event).__name__)

    def _emit_memory(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_memory >= MEMORY_INTERVAL:
            self._last_memory = now
            self._emit(sample_memory())


__all__ = ["Engine", "Journal", "Outcome", "RunRequest"]
