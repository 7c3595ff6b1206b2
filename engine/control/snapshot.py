"""What a client attaching to a served run mid-way is sent first, so its app shows what an app
that saw every event shows."""

from __future__ import annotations

from . import events as ev
from . import wire
from .run_view import HISTORY, LATEST_IN_PLACE, RunView


class Snapshot:
    """The events a client needs to rebuild the run's :class:`RunView` mid-run, as lines.

    The run's history in order (:data:`~.run_view.HISTORY`: the load, dimension changes,
    commits, undos and the recovery's events, with the latest ``StepStarted`` and ``Progress``
    in their places), then what the server's own view holds now
    (:meth:`RunView.replay_tail`). Exports and evaluations are not replayed (their results are
    in the session folder). tests/engine/test_server.py checks the rebuilt view after every event.
    """

    def __init__(self, view: RunView) -> None:
        """``view`` is the server's, folded over the same events (the caller applies them)."""
        self.view = view
        self._history: list[bytes] = []
        self._in_place: dict[type, bytes] = {}

    def record(self, event: ev.Event, line: bytes) -> None:
        """Log ``event`` (encoded as ``line``) if it is part of the history."""
        if isinstance(event, LATEST_IN_PLACE):
            previous = self._in_place.get(type(event))
            if previous is not None:
                self._history.remove(previous)
            self._in_place[type(event)] = line
            self._history.append(line)
        elif isinstance(event, HISTORY):
            self._history.append(line)

    def lines(self) -> list[bytes]:
        return [*self._history, *map(wire.encode_event, self.view.replay_tail())]


__all__ = ["Snapshot"]
