"""What a client attaching to a served run mid-way is sent first, so its app shows what an app
that saw every event shows."""

from __future__ import annotations

from collections import deque

from . import events as ev

#: Memory samples a client gets on attach (the app's memory history).
MEMORY_HISTORY = 60


class Snapshot:
    """The events a client needs to rebuild the app's state mid-run, as encoded lines.

    In order: the Loaded event, every dimension change, commit and undo, with the latest
    StepStarted and Progress in their places among them (what the plan, the curve and the
    status line are made of); the scores of the candidates table as it shows now; recent
    memory samples; the latest activity, notice, error, state and end; a waiting proposal.
    Exports and evaluations are not replayed (their results are in the session folder).
    tests/test_serve.py checks that a client rebuilds what the screen shows after any event.
    """

    _LATEST = ("Activity", "Notice", "Error", "StateChanged", "Finished")
    _HISTORY = (ev.Loaded, ev.DimensionChanged, ev.StepCommitted, ev.StepUndone)
    _LATEST_IN_PLACE = (ev.StepStarted, ev.Progress)  # only the latest, in its place

    def __init__(self) -> None:
        self.history: list[bytes] = []
        self.in_place: dict[type, bytes] = {}
        self.scores: list[bytes] = []
        self.scored: tuple[int, str] | None = None  # the step the scores belong to
        self.proposal: bytes | None = None
        self.memory: deque[bytes] = deque(maxlen=MEMORY_HISTORY)
        self.latest: dict[str, bytes] = {}

    def apply(self, event: ev.Event, line: bytes) -> None:
        name = type(event).__name__
        if isinstance(event, self._LATEST_IN_PLACE):
            previous = self.in_place.get(type(event))
            if previous is not None:
                self.history.remove(previous)
            self.in_place[type(event)] = line
            self.history.append(line)
            if isinstance(event, ev.StepStarted):
                self.proposal = None
        elif isinstance(event, self._HISTORY):
            self.history.append(line)
            if not isinstance(event, ev.DimensionChanged):
                self.proposal = None
            if isinstance(event, ev.StepUndone):
                self.scored = None  # the table shown is stale: the next score starts afresh
        elif isinstance(event, ev.CandidateScored):
            if self.scored != (event.step, event.dimension):
                # the app keeps the last step's table until the next step's first score
                self.scores, self.scored = [], (event.step, event.dimension)
            self.scores.append(line)
        elif isinstance(event, ev.Proposal):
            self.proposal = line
        elif isinstance(event, ev.MemorySample):
            self.memory.append(line)
        elif name in self._LATEST:
            self.latest[name] = line
            if isinstance(event, ev.StateChanged) and event.state not in ("waiting", "paused"):
                self.proposal = None  # a proposal stands only while it waits (or is paused)

    def lines(self) -> list[bytes]:
        latest = [self.latest[name] for name in self._LATEST if name in self.latest]
        proposal = [self.proposal] if self.proposal else []  # after the state it waits in
        return [*self.history, *self.scores, *self.memory, *latest, *proposal]


__all__ = ["MEMORY_HISTORY", "Snapshot"]
