"""The engine's subscribers: called in order, on the engine thread, for every event.

One subscriber's failure never stops the others nor the run, with two exceptions that are the
session's: a result that could not be saved (the run goes on, and the user is told) and a
session that cannot be kept (a full disk: the run is ended, and says why last).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from ..errors import EngineError, ResultNotSaved
from . import events as ev

log = logging.getLogger("mptui.engine")

Subscriber = Callable[[ev.Event], None]


class Subscribers:
    def __init__(
        self, subscribers: list[Subscriber], on_lost: Callable[[EngineError], None]
    ) -> None:
        """``on_lost``: told once, of the first error that means the session cannot be kept."""
        self._subscribers = list(subscribers)
        self._on_lost = on_lost
        self.lost: EngineError | None = None

    def add(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def emit(self, event: ev.Event) -> None:
        """``event``, stamped with the time it is sent, to every subscriber."""
        event = replace(event, time=time.monotonic())
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except ResultNotSaved as error:
                self.emit(ev.Notice.of(error))
            except EngineError as error:
                if self.lost is None:
                    self.lost = error
                    self._on_lost(error)
            except Exception:
                log.exception("event subscriber failed on %s", type(event).__name__)


__all__ = ["Subscriber", "Subscribers"]
