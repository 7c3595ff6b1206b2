"""The greedy search as a phase of the engine's run: step after step, every candidate scored and
the best committed (or, in guided mode, proposed), and the commands that steer it (override,
accept, order, guided mode, undo).

The engine owns the state machine, the command queue and the events; this class owns what the
search needs between two commands: the model being pruned, the step in progress, its scores,
the proposal waiting in guided mode. Every change of the model (a commit or an undo) is made
whole before anyone hears of it: the weights, the counts, the journal line and plan.json, then
the event.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..control import commands as cmd
from ..control import events as ev
from ..control.commands import Outcome
from ..control.events import EngineState
from ..errors import BadInput, setting
from ..session.files import PLAN
from ..workers import directives as dv
from .fast_search import Evaluation
from .plan import Plan, PlanStep, write_plan
from .pruning import Pruning, StepStats
from .step_work import Scoring, StepWork
from .structures import Structure


class Journal(Protocol):
    """Where decisions are made durable before they are announced (the session folder)."""

    def record_commit(self, step: PlanStep) -> None: ...
    def record_undo(self, index: int) -> None: ...
    def record_order(self, order: Sequence[str]) -> None: ...
    def record_guided(self, guided: bool) -> None: ...


class Host(Protocol):
    """What the search asks of the engine that runs it."""

    state: EngineState
    paused_from: EngineState  # where Resume goes back to

    def set_state(self, state: EngineState) -> None: ...
    def poll(self) -> Outcome: ...
    def dispatch_next(self) -> Outcome: ...
    def emit(self, event: ev.Event) -> None: ...
    def emit_memory(self, force: bool = False) -> None: ...
    def failing_as(self, what: str) -> contextlib.AbstractContextManager[None]: ...


@dataclass
class _Proposal:
    """Guided mode: the step's best candidate, waiting for the user."""

    structure: Structure
    score: float
    stats: StepStats


class SearchPhase:
    """The search on ``pruning``, scored by ``scoring`` (alone or with followers)."""

    def __init__(
        self,
        host: Host,
        pruning: Pruning,
        scoring: Scoring,
        *,
        guided: bool,
        journal: Journal | None,
        plan_dirs: Sequence[Path],
    ) -> None:
        """``journal`` records every decision before it is announced; ``plan_dirs`` get
        plan.json after every change."""
        self._host = host
        self.pruning = pruning
        self.scoring = scoring
        self.guided = guided
        self._journal = journal
        self._plan_dirs = tuple(plan_dirs)
        self._work: StepWork | None = None  # the step being scored
        self._proposal: _Proposal | None = None
        self._step_scores: dict[Structure, float] = {}  # this step's, for an override

    # --- the loop ---------------------------------------------------------------------------------
    def run(self) -> EngineState:
        """Step after step until no dimension is left (DONE) or a Stop (STOPPED)."""
        host, pruning = self._host, self.pruning
        dimension = None
        host.set_state(EngineState.RUNNING)
        while True:
            if host.poll() is Outcome.STOP:
                return EngineState.STOPPED
            current = pruning.current_dimension()
            if current != dimension:
                dimension = current
                target = pruning.settings.targets().get(current) if current else None
                host.emit(ev.DimensionChanged(current, target, pruning.settings.order))
            if current is None:
                return EngineState.DONE
            if self._step(current) is Outcome.STOP:
                return EngineState.STOPPED

    def hold(self) -> None:
        """A pause: followers stop after the candidate in hand."""
        if self._work is not None:
            self._work.hold()

    def _step(self, dimension: str) -> Outcome:
        """Score every candidate of ``dimension`` and commit (or propose) the best.

        Returns early when a command changed the model (the caller starts a fresh step) or
        stopped the run.
        """
        host, pruning = self._host, self.pruning
        candidates = pruning.eligible(dimension)
        step = len(pruning.steps) + 1
        with host.failing_as(f"scoring the model before step {step}"):
            current = pruning.current_score(dimension)
        host.emit(ev.StepStarted(step, dimension, tuple(c.id for c in candidates), current))
        self._step_scores = scores = {}  # fully scored candidates only (all of them when exact)
        stats, started = StepStats(), time.monotonic()
        scorer = pruning.scorers[dimension]
        self._work = work = self.scoring.begin(dimension, candidates)
        try:
            while not work.finished:
                outcome = host.poll()
                if outcome is not Outcome.NOTHING:
                    work.abandon()
                    return outcome
                with host.failing_as(
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
        if self.guided:
            return self._await_decision(step, _Proposal(best, scores[best], stats))
        self._commit(best, scores[best], "engine", stats)
        return Outcome.CHANGED

    def _report_scored(
        self, step: int, result: Evaluation, current: float, stats: StepStats, started: float
    ) -> None:
        candidate, k, n = result.candidate, result.k, result.n
        elapsed = time.monotonic() - started
        self._host.emit(
            ev.CandidateScored(
                step, candidate.dimension, candidate.id, result.score, result.score - current,
                self.pruning.params_freed(candidate), k, n, result.rows, result.total_rows,
            )
        )  # fmt: skip
        self._host.emit(
            ev.Progress(step, k, n, stats.tokens / max(elapsed, 1e-9), elapsed / k * (n - k))
        )
        self._host.emit_memory()

    def _best(self, scores: dict[Structure, float]) -> Structure | None:
        """The lowest finite score, the first in canonical order on ties; a NaN or inf ranks
        last (with a warning), never wins."""
        finite = {c: s for c, s in scores.items() if math.isfinite(s)}
        for candidate in scores.keys() - finite.keys():
            self._host.emit(ev.Notice(f"{candidate.id} scored {scores[candidate]}; ranked last"))
        return min(finite, key=finite.__getitem__) if finite else None

    def _pause_for_non_finite(self, dimension: str) -> Outcome:
        dtype = self.pruning.plan().model.dtype or "?"
        self._host.emit(
            ev.Notice.of(
                f"every {dimension} candidate scored NaN or inf, so nothing was committed; "
                f"paused. With {dtype} this is usually an overflow: run again with ",
                setting("dtype"),
                " bfloat16 or float32, or override, undo or change the order now",
            )
        )
        self._host.paused_from = EngineState.RUNNING
        self._host.set_state(EngineState.PAUSED)
        return Outcome.NOTHING

    def _await_decision(self, step: int, proposal: _Proposal) -> Outcome:
        """Guided mode: wait until Accept, an Override or an Undo settles the step."""
        host = self._host
        self._proposal = proposal
        host.emit(ev.Proposal(step, proposal.structure.id, proposal.score))
        host.set_state(EngineState.WAITING)
        while self._proposal is proposal:
            if not self.guided and host.state is EngineState.WAITING:
                return self._accept()  # guided mode was turned off: the engine decides
            if host.dispatch_next() is Outcome.STOP:
                return Outcome.STOP
        return Outcome.CHANGED

    # --- the commands that steer it ----------------------------------------------------------
    def steer(self, command: cmd.Command) -> Outcome:
        """An Override, Accept, SetOrder, SetGuided or Undo the command table let through."""
        handler = {
            cmd.Override: self.on_override,
            cmd.Accept: self.on_accept,
            cmd.SetOrder: self.on_set_order,
            cmd.SetGuided: self.on_set_guided,
            cmd.Undo: self.on_undo,
        }[type(command)]
        return handler(command)

    def on_override(self, command: cmd.Override) -> Outcome:
        """Commit the user's structure now (between two candidates when running)."""
        try:
            structure = self.pruning.structure_from_id(command.structure)
        except BadInput as error:
            self._host.emit(ev.Notice.of("override ignored: ", error))
            return Outcome.NOTHING
        started = time.monotonic()
        score = self._step_scores.get(structure)
        if score is None:
            with self._host.failing_as(f"scoring {structure.id} (an override)"):
                score = self.pruning.score_candidate(structure)
        tokens = self.pruning.scorer_for(structure).tokens
        self._commit(structure, score, "user", StepStats(time.monotonic() - started, 1, tokens))
        return Outcome.CHANGED

    def on_accept(self, _command: cmd.Accept) -> Outcome:
        if self._proposal is None:
            self._host.emit(ev.Notice("nothing to accept: no proposal is waiting"))
            return Outcome.NOTHING
        return self._accept()

    def _accept(self) -> Outcome:
        proposal = self._proposal
        assert proposal is not None
        self._commit(proposal.structure, proposal.score, "engine", proposal.stats)
        return Outcome.CHANGED

    def on_set_order(self, command: cmd.SetOrder) -> Outcome:
        pruning = self.pruning
        try:
            settings = pruning.settings.with_order(tuple(command.order))
        except BadInput as error:
            self._host.emit(ev.Notice.of("order not changed: ", error))
            return Outcome.NOTHING
        if self._journal is not None:
            self._journal.record_order(settings.order)
        pruning.settings = settings
        self.scoring.mirror(dv.Order(settings.order))
        self.save_plan()
        order = " -> ".join(settings.order)
        self._host.emit(ev.Notice(f"order is now {order} (from the next step)"))
        return Outcome.NOTHING

    def on_set_guided(self, command: cmd.SetGuided) -> Outcome:
        if self._journal is not None:
            self._journal.record_guided(command.guided)
        self.guided = command.guided
        self._host.emit(ev.GuidedChanged(command.guided))
        return Outcome.NOTHING

    def on_undo(self, _command: cmd.Undo) -> Outcome:
        """Undo the last removal: one step, or both sub-blocks of a layer method's layer."""
        if not self.pruning.steps:
            self._host.emit(ev.Notice("nothing to undo"))
            return Outcome.NOTHING
        for _ in range(self.pruning.last_removal()):
            self._undo_step()
        return Outcome.CHANGED

    # --- changes to the model -----------------------------------------------------------------
    def _undo_step(self) -> None:
        pruning = self.pruning
        with self._host.failing_as(f"undoing step {len(pruning.steps)}"):
            step = pruning.undo()
        try:
            if self._journal is not None:
                self._journal.record_undo(step.index)
        except BaseException:
            self._recommit(step)  # not on disk: the undo did not happen
            raise
        self.scoring.mirror(dv.UndoCommit())
        self._settled()
        self.save_plan()
        structure = step.structure
        self._host.emit(
            ev.StepUndone(
                step.index, structure.id, pruning.current_score(structure.dimension),
                pruning.ratio(),
            )
        )  # fmt: skip
        self.scoring.verify(step.index)

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
            with self._host.failing_as(f"scoring {part.id}, the first part of {structure.id}"):
                part_score = self.pruning.score_candidate(part)
            tokens = self.pruning.scorer_for(part).tokens
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
        pruning = self.pruning
        with self._host.failing_as(f"committing {structure.id} as step {len(pruning.steps) + 1}"):
            step = pruning.commit(structure, score, chosen_by, stats)
        try:
            if self._journal is not None:
                self._journal.record_commit(step)
        except BaseException:
            pruning.undo()  # not on disk: the commit did not happen
            raise
        self.scoring.mirror(dv.Commit(structure.id, score, chosen_by))
        self._settled()
        self.save_plan()
        self._host.emit(
            ev.StepCommitted(
                step, score, pruning.ratio(), pruning.ratio_layers, pruning.params,
                stats.seconds, stats.candidates, stats.tokens,
            )
        )  # fmt: skip
        self._host.emit_memory(force=True)
        self.scoring.verify(step.index)

    def _recommit(self, step: PlanStep) -> None:
        self.pruning.commit(step.structure, step.score, step.chosen_by)
        self.pruning.steps[-1] = step

    def _settled(self) -> None:
        """A commit or undo settles the step in progress: its scores and proposal are stale."""
        host = self._host
        self._step_scores = {}
        if self._proposal is not None:
            self._proposal = None
            if host.state is EngineState.WAITING:
                host.set_state(EngineState.RUNNING)
        if host.paused_from is EngineState.WAITING:
            host.paused_from = EngineState.RUNNING

    def save_plan(self, plan: Plan | None = None) -> None:
        """plan.json in every plan folder (none: nothing to write)."""
        if not self._plan_dirs:
            return
        plan = plan or self.pruning.plan()
        for folder in self._plan_dirs:
            write_plan(folder / PLAN, plan)


__all__ = ["Host", "Journal", "SearchPhase"]
