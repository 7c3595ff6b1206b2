"""Scoring one step's candidates, alone or with followers (the leader's side of
engine/workers/team.py).

The runner asks a :class:`Scoring` for a :class:`StepWork` per step and drives it between two
commands: ``advance()`` returns the results that are ready (at least one, unless it waited a
moment for followers), ``hold()`` parks the followers at a pause, ``abandon()`` ends the step
early. Scores are the same numbers whoever computes them: each candidate is scored whole, on
the same rows in the same batches, by a replica in the same state (docs/method.md §4).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from ..errors import EngineError
from ..workers import directives as dv
from ..workers.team import Team, longest_first
from .fast_search import Evaluation
from .pruning import Pruning
from .structures import Structure

#: How long the leader waits for a follower's result before looking at its commands again.
RESULT_POLL_SECONDS = 0.005
#: How long the leader waits, at the end, for the followers to read their EndRun.
LEAVE_SECONDS = 30.0


class StepWork(Protocol):
    @property
    def finished(self) -> bool: ...
    def advance(self) -> list[Evaluation]: ...
    def hold(self) -> None: ...
    def abandon(self) -> None: ...


class Scoring(Protocol):
    def begin(self, dimension: str, candidates: Sequence[Structure]) -> StepWork: ...
    def mirror(self, directive: dv.Directive) -> None: ...
    def verify(self, step: int) -> None: ...
    def close(self) -> None: ...


class LocalWork:
    """One process: the pruning's evaluations (exact, or ``--fast``'s rounds), one per
    ``advance``."""

    def __init__(self, evaluations: Iterator[Evaluation]) -> None:
        self._evaluations = evaluations
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def advance(self) -> list[Evaluation]:
        result = next(self._evaluations, None)
        if result is None:
            self._finished = True
            return []
        return [result]

    def hold(self) -> None:
        """Nothing runs between two ``advance`` calls."""

    def abandon(self) -> None:
        self._finished = True


class LocalScoring:
    def __init__(self, pruning: Pruning) -> None:
        self._pruning = pruning

    def begin(self, dimension: str, candidates: Sequence[Structure]) -> LocalWork:
        return LocalWork(self._pruning.evaluations(dimension, candidates))

    def mirror(self, directive: dv.Directive) -> None:
        """No one to tell."""

    def verify(self, step: int) -> None:
        """No one to compare with."""

    def close(self) -> None:
        """Nothing to release."""


class TeamScoring:
    """The leader's end of the conversation with every follower."""

    def __init__(self, team: Team, pruning: Pruning, interrupt: Callable[[], None]) -> None:
        """``interrupt`` is called while waiting on followers and may raise to give up (a Stop
        while a follower that died is awaited)."""
        self.team = team
        self.pruning = pruning
        self._interrupt = interrupt
        self._sent = dict.fromkeys(team.followers, 0)  # directives sent, per follower
        self._read = dict.fromkeys(team.followers, 0)  # results read, per follower
        self._gen = 0
        self._version = 0  # changes of the model mirrored so far

    def begin(self, dimension: str, candidates: Sequence[Structure]) -> TeamWork:
        return TeamWork(self, dimension, candidates)

    def direct(self, directive: dv.Directive) -> None:
        for rank in self.team.followers:
            self.send(rank, directive)

    def send(self, rank: int, directive: dv.Directive) -> None:
        self.team.put(dv.op_key(rank, self._sent[rank]), directive)
        self._sent[rank] += 1

    def next_gen(self) -> int:
        self._gen += 1
        return self._gen

    def results(self) -> list[dv.Result]:
        """Every result a follower has sent since the last call, without waiting."""
        out = []
        for rank in self.team.followers:
            while self.team.has(dv.score_key(rank, self._read[rank])):
                out.append(self.team.take(dv.score_key(rank, self._read[rank])))
                self._read[rank] += 1
        return out

    def mirror(self, directive: dv.Directive) -> None:
        """Every follower repeats a change the leader made (checked by :meth:`verify`)."""
        self.direct(directive)
        if isinstance(directive, (dv.Commit, dv.UndoCommit)):
            self._version += 1

    def verify(self, step: int) -> None:
        """After a commit or an undo every follower's model must equal the leader's, bit for
        bit, or the run stops. Waits for each follower to finish the candidate in hand."""
        mine = dv.model_checksum(self.pruning.model)
        for rank in self.team.followers:
            key = dv.sum_key(rank, self._version)
            while not self.team.has(key):
                self._interrupt()
                time.sleep(RESULT_POLL_SECONDS)
            theirs = self.team.take(key)
            if theirs != mine:
                raise EngineError(
                    f"worker rank {rank}'s model differs from rank 0's after step {step} "
                    f"(checksum {theirs} against {mine}); the replicas diverged, so the run "
                    "stops here with its journal intact"
                )

    def close(self) -> None:
        """Tell every follower to leave. Where the store lives in this process, wait (a while)
        until they have read it, or it would go with the message."""
        self.direct(dv.EndRun())
        if not self.team.hosts_store:
            return
        deadline = time.monotonic() + LEAVE_SECONDS
        for rank in self.team.followers:
            while not self.team.has(dv.left_key(rank)) and time.monotonic() < deadline:
                time.sleep(RESULT_POLL_SECONDS)


class TeamWork:
    """One step as a work queue, costliest candidate first: every worker takes the next one as
    it comes free, so a worker slowed by other duties (the leader's events and commands) takes
    fewer. The leader scores from the queue between collecting the others' results."""

    def __init__(
        self, scoring: TeamScoring, dimension: str, candidates: Sequence[Structure]
    ) -> None:
        self._scoring = scoring
        self._dimension = dimension
        self._candidates = list(candidates)
        self._ids = tuple(c.id for c in candidates)
        self._scores: dict[int, float] = {}
        self._gens: set[int] = set()
        self._gen = 0
        self._queue: tuple[int, ...] = ()  # empty: nothing left for the leader to claim
        self._held = False
        self._issue(range(len(candidates)))

    @property
    def finished(self) -> bool:
        return len(self._scores) == len(self._candidates)

    def advance(self) -> list[Evaluation]:
        if self._held:
            self._held = False
            self._issue([i for i in range(len(self._candidates)) if i not in self._scores])
        ready = self._collect()
        if not ready and self._queue:
            index = self._claim()
            if index is not None and index not in self._scores:
                candidate = self._candidates[index]
                ready.append(self._record(index, self._scoring.pruning.score_candidate(candidate)))
        if not ready and not self._queue:
            time.sleep(RESULT_POLL_SECONDS)
        return ready

    def hold(self) -> None:
        self._scoring.direct(dv.Hold())
        self._held = True
        self._queue = ()

    def abandon(self) -> None:
        self._scoring.direct(dv.Hold())
        self._queue = ()

    def _issue(self, indices: Sequence[int]) -> None:
        """Queue ``indices`` costliest first: by the sub-blocks each candidate runs from its
        cached boundary."""
        pruning = self._scoring.pruning
        costs = []
        for index in indices:
            candidate = self._candidates[index]
            costs.append(pruning.scorer_for(candidate).cost(candidate.sub_block))
        self._queue = tuple(indices[i] for i in longest_first(costs))
        self._gen = self._scoring.next_gen()
        self._gens.add(self._gen)
        self._scoring.direct(dv.Score(self._gen, self._dimension, self._ids, self._queue))

    def _claim(self) -> int | None:
        """The leader's next candidate from the queue, or None (and no more) once it is empty."""
        position = self._scoring.team.claim(dv.claim_key(self._gen))
        if position < len(self._queue):
            return self._queue[position]
        self._queue = ()
        return None

    def _collect(self) -> list[Evaluation]:
        ready = []
        for result in self._scoring.results():
            if result.gen in self._gens and result.index not in self._scores:
                ready.append(self._record(result.index, result.score))
        return ready

    def _record(self, index: int, score: float) -> Evaluation:
        """Candidate ``index`` scored on every row (followers run the exact search only)."""
        self._scores[index] = score
        rows = len(self._scoring.pruning.scorer_for(self._candidates[index]).chunks)
        return Evaluation(
            self._candidates[index], score, rows, rows, rows, 1, len(self._scores),
            len(self._candidates),
        )  # fmt: skip


def scoring_for(pruning: Pruning, team: Team | None, interrupt: Callable[[], None]) -> Scoring:
    """Scoring alone, or as the leader of ``team`` (``interrupt`` stops a wait for followers)."""
    return LocalScoring(pruning) if team is None else TeamScoring(team, pruning, interrupt)
