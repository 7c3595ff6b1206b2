"""What the ``mptui``, ``mptui eval`` and ``mptui export`` commands share: the parser whose
usage errors are one line, the one-line error, and progress lines on stderr.

Imported by all three, it imports none of them, and nothing heavy: ``mptui --help`` must not
load torch.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: The exit status of bad input (a usage error or input the engine rejected).
BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr and exit status 2, like every other bad input."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(BAD_INPUT, f"mptui: error: {message}\n")


def print_error(message: object, status: int = BAD_INPUT) -> int:
    """``mptui: error: MESSAGE`` as one line on stderr; returns ``status`` (the exit status)."""
    text = " ".join(str(message).split())
    print(f"mptui: error: {text}", file=sys.stderr, flush=True)
    return status


#: The exit status of a fault the input did not cause (a lost device).
FAULT = 1


class Doing:
    """What a command that loads a model is doing now (``loading the model``, ``evaluating the
    pruned model``), for the line a lost device ends it with: the error itself cannot say."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __call__(self, what: str) -> None:
        self.what = what


def print_failure(error: Exception, doing: Doing, session: Path | None, again: str) -> int:
    """The one line of what ended ``mptui eval`` or ``mptui export``, and its exit status: a
    lost device (also when lm-eval's error was raised from one) says what it was doing and
    ``again`` (how to finish), 1; the engine's own errors, 2 (a full disk among them, as
    docs/engine.md states). Any other error is a bug, raised again for its traceback."""
    from mptui.engine.api import EngineError, device_failed, is_device_failure

    if is_device_failure(error):
        return print_error(device_failed(error, doing.what, session, again=again), FAULT)
    if isinstance(error, EngineError):
        return print_error(error)
    raise error


class ProgressLines:
    """``label: done / total unit (pct)`` lines on stderr, few enough for a log: the first, one
    at each further tenth (or after :attr:`QUIET_S` without one), never two within
    :attr:`MIN_GAP_S`, and always the last (``done == total``)."""

    MIN_GAP_S = 1.0
    QUIET_S = 30.0

    def __init__(
        self,
        label: str,
        unit: str = "requests",
        *,
        amount: Callable[[int], str] = "{:,}".format,
        clock: Callable[[], float] = time.monotonic,
        out=None,
    ) -> None:
        self.label, self.unit, self.amount, self.clock = label, unit, amount, clock
        self.out = out
        self._last_time: float | None = None
        self._last_tenth = -1
        self._finished = False

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        tenth = 10 * done // total if total > 0 else 0
        finished = total > 0 and done >= total
        if finished:
            if self._finished:
                return
        elif self._last_time is not None:
            gap = now - self._last_time
            if gap < self.MIN_GAP_S or (tenth <= self._last_tenth and gap < self.QUIET_S):
                return
        self._last_time, self._last_tenth, self._finished = now, tenth, finished
        share = f" ({done / total:.0%})" if total > 0 else ""
        line = f"{self.label}: {self.amount(done)} / {self.amount(total)} {self.unit}{share}"
        print(line, file=self.out or sys.stderr, flush=True)


def loading_lines(name_or_path: str) -> ProgressLines:
    """``loading NAME: 2 / 3 shards (67%)`` lines, for ``load_model(on_shard=...)``."""
    from mptui.engine.api import model_label

    return ProgressLines(f"loading {model_label(name_or_path)}", "shards")
