"""The engine thread: loads, then runs the greedy search under the caller's commands.

Commands arrive on a thread-safe queue and are drained between candidate evaluations, so a
pause, an override or a stop takes effect within one evaluation. Events go to subscribers as
plain values. Any exception becomes an ``Error`` event followed by a clean stop: the thread
never dies silently.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from . import commands as cmd
from . import events as ev
from .errors import BadInput, Cancelled, EngineError
from .evaluate import EvalRequest, evaluate
from .export import export_model
from .memory import sample_memory
from .session import PruningSession, StepStats
from .setup import RunRequest, build_session
from .structures import Structure

log = logging.getLogger("mptui.engine")

Subscriber = Callable[[ev.Event], None]

#: Seconds between memory samples while scoring.
MEMORY_INTERVAL = 1.0


class _Stopped(Exception):
    """Unwinds the step loop when the caller asked to stop."""


class _Restart(Exception):
    """Abandons the step being scored (after an undo) and starts a fresh one."""


class Engine:
    """Runs one pruning session. ``start()`` for a thread, ``run()`` to run in the caller's."""

    def __init__(
        self,
        request: RunRequest,
        subscribers: list[Subscriber] | None = None,
        *,
        linger: bool = False,
    ) -> None:
        """``linger``: after the search, keep answering exports and evaluations until a Stop
        (the app, where the user looks at the result before quitting)."""
        self.request = request
        self.linger = linger
        self._dense_results: dict[EvalRequest, dict] = {}
        self._stop_requested = threading.Event()
        self._subscribers: list[Subscriber] = list(subscribers or [])
        self._commands: queue.Queue[cmd.Command] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._paused = False
        self._guided = request.settings.guided
        self._override: Structure | None = None  # the user's next removal
        self._last_memory = 0.0
        self.session: PruningSession | None = None
        self.result: ev.Finished | None = None

    # --- caller side --------------------------------------------------------------------------
    def plan(self) -> dict | None:
        """The plan so far (call from a subscriber, which runs on the engine thread)."""
        return self.session.plan() if self.session is not None else None

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def send(self, command: cmd.Command) -> None:
        if isinstance(command, cmd.Stop):
            self._stop_requested.set()  # seen by a long evaluation before the queue is
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

    # --- engine thread ----------------------------------------------------------------------------
    def run(self) -> ev.Finished:
        reason = "done"
        try:
            self._emit(ev.StateChanged("loading"))
            self.session = build_session(self.request, self._emit)
            self._emit_memory(force=True)
            self._search()
        except _Stopped:
            reason = "stopped"
        except EngineError as error:
            reason = "error"
            self._emit(ev.Error(str(error)))
        except Exception as error:  # the thread must never die silently
            reason = "error"
            log.exception("engine failed")
            self._emit(ev.Error(f"{type(error).__name__}: {error}"))
        plan = self.session.plan() if self.session else {}
        self._emit(ev.StateChanged("error" if reason == "error" else "done"))
        self.result = ev.Finished(reason=reason, plan=plan)
        self._emit(self.result)
        if self.linger and reason != "stopped":
            self._serve_after_search()
        return self.result

    def _serve_after_search(self) -> None:
        while not isinstance(command := self._commands.get(), cmd.Stop):
            if self.session is None:
                self._emit(ev.Warning("the model did not load; nothing to export or evaluate"))
            elif isinstance(command, (cmd.Export, cmd.Evaluate)):
                try:
                    self._handle(command)
                except _Stopped:
                    return
            else:
                self._emit(ev.Warning("the run is finished; export (x) and evaluate (e) remain"))

    def _emit(self, event: ev.Event) -> None:
        event = replace(event, time=time.monotonic())
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("event subscriber failed on %s", type(event).__name__)

    def _emit_memory(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_memory >= MEMORY_INTERVAL:
            self._last_memory = now
            self._emit(sample_memory())

    def _search(self) -> None:
        session = self.session
        assert session is not None
        dimension = None
        self._emit(ev.StateChanged("running"))
        while True:
            self._drain()
            current = session.current_dimension()
            if current != dimension:
                dimension = current
                target = session.settings.targets().get(current) if current else None
                self._emit(ev.DimensionChanged(current, target, session.settings.order))
            if current is None and self._override is None:
                return
            try:
                self._step(current)
            except _Restart:
                continue

    def _step(self, dimension: str | None) -> None:
        session = self.session
        assert session is not None
        if self._override is not None:
            self._commit_override()
            return
        assert dimension is not None
        candidates = session.eligible(dimension)
        step = len(session.steps) + 1
        current = session.current_score(dimension)
        self._emit(ev.StepStarted(step, dimension, tuple(c.id for c in candidates), current))
        stats, scores = StepStats(), {}
        started = time.monotonic()
        tokens = session.scorers[dimension].tokens
        for k, candidate in enumerate(candidates, start=1):
            self._drain()
            if self._override is not None:
                self._commit_override(known=scores)
                return
            score = session.evaluate(candidate)
            scores[candidate] = score
            stats.candidates += 1
            stats.tokens += tokens
            elapsed = time.monotonic() - started
            self._emit(
                ev.CandidateScored(
                    step,
                    dimension,
                    candidate.id,
                    score,
                    score - current,
                    session.params_freed(candidate),
                    k,
                    len(candidates),
                )
            )
            self._emit(
                ev.Progress(
                    step,
                    k,
                    len(candidates),
                    stats.tokens / max(elapsed, 1e-9),
                    elapsed / k * (len(candidates) - k),
                )
            )
            self._emit_memory()
        stats.seconds = time.monotonic() - started
        best = min(candidates, key=lambda c: scores[c])  # min keeps the first on ties
        chosen_by = "engine"
        if self._guided:
            best, chosen_by = self._await_decision(step, best, scores)
        self._commit(best, scores[best], chosen_by, stats)

    def _commit(self, structure: Structure, score: float, chosen_by: str, stats: StepStats) -> None:
        session = self.session
        assert session is not None
        step = session.commit(structure, score, chosen_by, stats)
        self._emit(
            ev.StepCommitted(
                step,
                score,
                session.ratio(),
                session.ratio_layers,
                session.params,
                stats.seconds,
                stats.candidates,
                stats.tokens,
            )
        )
        self._emit_memory(force=True)

    def _commit_override(self, known: dict[Structure, float] | None = None) -> None:
        structure = self._override
        self._override = None
        assert structure is not None and self.session is not None
        started = time.monotonic()
        score = (known or {}).get(structure)
        if score is None:
            score = self.session.evaluate(structure)
        stats = StepStats(time.monotonic() - started, 1, self.session.scorer_for(structure).tokens)
        self._commit(structure, score, "user", stats)

    def _await_decision(
        self, step: int, proposal: Structure, scores: dict[Structure, float]
    ) -> tuple[Structure, str]:
        """Guided mode: wait for Accept (the proposal) or an Override (an undo restarts)."""
        self._emit(ev.Proposal(step, proposal.id, scores[proposal]))
        self._emit(ev.StateChanged("waiting"))
        while True:
            command = self._commands.get()
            if isinstance(command, cmd.Accept) or (
                isinstance(command, cmd.SetGuided) and not command.guided
            ):
                self._guided = self._guided and not isinstance(command, cmd.SetGuided)
                self._emit(ev.StateChanged("running"))
                return proposal, "engine"
            if isinstance(command, cmd.Override):
                structure = self._resolve(command.structure)
                if structure is None:
                    continue
                self._emit(ev.StateChanged("running"))
                if structure not in scores:
                    scores[structure] = self.session.evaluate(structure)
                return structure, "user"
            self._handle(command)

    # --- commands -------------------------------------------------------------------------------
    def _drain(self) -> None:
        """Apply queued commands; while paused, wait here for the next one."""
        while True:
            try:
                command = self._commands.get(block=self._paused)
            except queue.Empty:
                return
            self._handle(command)

    def _handle(self, command: cmd.Command) -> None:
        session = self.session
        assert session is not None
        if isinstance(command, cmd.Stop):
            raise _Stopped
        if isinstance(command, cmd.Pause) and not self._paused:
            self._paused = True
            self._emit(ev.StateChanged("paused"))
        elif isinstance(command, cmd.Resume) and self._paused:
            self._paused = False
            self._emit(ev.StateChanged("running"))
        elif isinstance(command, cmd.Override):
            self._override = self._resolve(command.structure)
        elif isinstance(command, cmd.SetOrder):
            self._set_order(command.order)
        elif isinstance(command, cmd.SetGuided):
            self._guided = command.guided
        elif isinstance(command, cmd.Undo):
            self._undo()
        elif isinstance(command, cmd.Export):
            self._export(Path(command.path))
        elif isinstance(command, cmd.Evaluate):
            self._evaluate(command.request)

    def _export(self, path: Path) -> None:
        session = self.session
        label = f"exporting to {path}"  # the app reads "exporting" to hold a quit
        self._emit(ev.Activity(label))
        try:
            result = export_model(
                session.model, session.tokenizer, session.plan(), path,
                progress=lambda done, total: self._emit(ev.Activity(label, done, total)),
            )  # fmt: skip
        except (EngineError, OSError) as error:
            self._emit(ev.Warning(f"export failed: {error}"))
            return
        finally:
            self._emit(ev.Activity(""))
        self._emit(
            ev.Exported(str(result.path), result.params, result.bytes, result.stock, result.seconds)
        )

    def _evaluate(self, request: EvalRequest) -> None:
        """Dense (once per request: undo all, score, redo) and pruned, side by side."""
        session = self.session
        cancelled = self._stop_requested.is_set
        try:
            request.check()
            dense = self._dense_results.get(request)
            if dense is None:
                self._emit(ev.Activity("evaluating the dense model"))
                with session.dense_model() as model:
                    dense = evaluate(model, session.tokenizer, request, cancelled)
                self._dense_results[request] = dense
            self._emit(ev.Activity("evaluating the pruned model"))
            pruned = evaluate(session.model, session.tokenizer, request, cancelled)
        except Cancelled:
            self._emit(ev.Warning("evaluation cancelled: the run was told to stop"))
            raise _Stopped from None
        except EngineError as error:
            self._emit(ev.Warning(f"evaluation failed: {error}"))
            return
        finally:
            self._emit(ev.Activity(""))
        self._emit(ev.Evaluated(dense, pruned, len(session.steps), session.ratio()))

    def _resolve(self, structure_id: str) -> Structure | None:
        try:
            return self.session.structure_from_id(structure_id)
        except BadInput as error:
            self._emit(ev.Warning(f"override ignored: {error}"))
            return None

    def _set_order(self, order: tuple[str, ...]) -> None:
        session = self.session
        try:
            session.settings = session.settings.with_order(tuple(order))
        except BadInput as error:
            self._emit(ev.Warning(f"order not changed: {error}"))
            return
        self._emit(ev.Warning(f"order is now {' -> '.join(order)} (from the next step)"))

    def _undo(self) -> None:
        session = self.session
        try:
            step = session.undo()
        except BadInput as error:
            self._emit(ev.Warning(str(error)))
            return
        structure = Structure.from_dict(step["structure"])
        self._emit(
            ev.StepUndone(
                step["index"],
                structure.id,
                session.current_score(structure.dimension),
                session.ratio(),
            )
        )
        raise _Restart


__all__ = ["Engine", "RunRequest"]
