"""The recovery as a phase of the engine's run (docs/method.md §10): after the search, or at
once for a resumed session whose recovery had started.

The engine thread drives it and keeps reading its command queue between optimizer steps
(``poll``); this class owns everything else: whether a recovery can start, the copy of the
pruned model it trains, the RECOVERING state and the state the run is left in.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

from ..control import events as ev
from ..control.events import ActivityKind, EngineState
from ..errors import EngineError
from ..model.device_failure import device_failed, is_device_failure
from ..output.export import is_export
from ..search.pruning import Pruning
from ..search.run_request import RunRequest
from .events import RecoveryFinished
from .folder import RecoveryFolder
from .run import RecoveryRun, prepare_recovery
from .settings import RecoverySettings
from .source import RecoverySource

log = logging.getLogger("mptui.engine")


class RecoveryPhase:
    """At most one recovery per engine; :attr:`current` is it once it has started."""

    def __init__(
        self,
        request: RunRequest,
        session_dir: Path | None,
        emit: Callable[[ev.Event], None],
        set_state: Callable[[EngineState], None],
    ) -> None:
        """``request``: what the run loaded (a hub id, a folder, or an export, which a recovery
        may take as it is) and how; ``session_dir``: where the recovery keeps its state."""
        self._request = request
        self._session_dir = session_dir
        self._emit = emit
        self._set_state = set_state
        self.current: RecoveryRun | None = None

    def run(
        self, pruning: Pruning, settings: RecoverySettings, poll: Callable[[], bool]
    ) -> EngineState | None:
        """Fine-tune a copy of ``pruning``'s pruned model (the pruning keeps the pruned one,
        for dense and pruned evaluations) until done, or until ``poll`` (called after every
        optimizer step, blocking while paused) returns True.

        Returns the state the run is left in (DONE, STOPPED or ERROR), or None when the
        recovery could not start (a Notice says why; nothing changed).
        """
        if self.current is not None:
            self._emit(ev.Notice("a recovery has already run in this session"))
            return None
        self.current = self._prepare(pruning, settings)
        if self.current is None:
            return None
        self._set_state(EngineState.RECOVERING)
        try:
            reason = self.current.run(poll=poll)
        except Exception as error:  # out of memory at one example, a full disk: say so, stay
            if is_device_failure(error):  # the state saved last is kept; --resume goes on
                during = f"recovering (optimizer step {self.current.step + 1})"
                error = device_failed(error, during, self._session_dir)
                failure = ev.Error.of(error)
            else:
                failure = ev.Error.of("recovery failed: ", error)
            if not isinstance(error, EngineError):
                log.exception("recovery failed")
            self._emit(failure)
            self._emit(RecoveryFinished("error", self.current.step, settings.steps))
            end = EngineState.ERROR
        else:
            end = EngineState.DONE if reason == "done" else EngineState.STOPPED
        self._set_state(end)
        return end

    def _prepare(self, pruning: Pruning, settings: RecoverySettings) -> RecoveryRun | None:
        from_export = is_export(Path(self._request.model).expanduser())
        if not pruning.steps and not from_export:
            self._emit(ev.Notice("nothing was removed, so there is nothing to recover"))
            return None
        if self._session_dir is None:
            self._emit(ev.Notice("recovery needs a session folder for its state"))
            return None
        source = (
            RecoverySource("export", Path(self._request.model))
            if from_export and not pruning.steps
            else RecoverySource("session", self._session_dir)
        ).loaded_as(self._request.dtype, self._request.device)  # a resume loads it alike
        # a copy of the model and the data tokenized: on a 7B, long enough to need a word
        self._emit(ev.Activity(ActivityKind.LOADING, "preparing the recovery"))
        pruning.release_scorers()  # nothing is scored once a recovery starts: free the GPU
        try:
            return prepare_recovery(
                copy.deepcopy(pruning.model), pruning.tokenizer, settings,
                RecoveryFolder(self._session_dir), self._emit, source, self._request.cache_dir,
            )  # fmt: skip
        except EngineError as error:
            self._emit(ev.Notice.of("recovery not started: ", error))
            return None
        finally:
            self._emit(ev.Activity(None))


__all__ = ["RecoveryPhase"]
