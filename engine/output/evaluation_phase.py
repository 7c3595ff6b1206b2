"""An Evaluate command on the engine thread: the dense model (once per request: every commit
undone, scored, redone), the pruned model and, once a recovery has started, the recovered one
(merged on a copy), side by side, with their progress on the status line."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from ..control import events as ev
from ..control.events import ActivityKind
from ..errors import Cancelled, DeviceFailed, EngineError
from ..recovery.run import RecoveryRun
from ..search.pruning import Pruning
from .eval_request import EvalRequest
from .evaluate import evaluate

#: Seconds between progress reports of an evaluation (its last is always sent).
ACTIVITY_INTERVAL = 0.25


class EvaluationPhase:
    """Evaluations between two candidates or optimizer steps; what cannot be evaluated is the
    Notice ``evaluation failed: ...`` and the run goes on; a lost device ends the run."""

    def __init__(
        self,
        emit: Callable[[ev.Event], None],
        failing_as: Callable[[str], contextlib.AbstractContextManager[None]],
        stop_requested: Callable[[], bool],
    ) -> None:
        """``failing_as(label)``: the engine's context that turns a lost device into
        :class:`DeviceFailed`; ``stop_requested``: whether a Stop is queued (lm-eval is
        interrupted between requests for it)."""
        self._emit = emit
        self._failing_as = failing_as
        self._stop_requested = stop_requested
        self._dense_results: dict[EvalRequest, dict] = {}

    def run(self, pruning: Pruning, recovery: RecoveryRun | None, request: EvalRequest) -> bool:
        """Evaluate and send ``Evaluated``; False when a Stop cancelled it (the run ends)."""
        try:
            with self._failing_as("evaluating"):
                dense, pruned, recovered = self._evaluations(pruning, recovery, request)
        except Cancelled:
            self._emit(ev.Notice("evaluation cancelled: the run was told to stop"))
            return False
        except DeviceFailed:
            raise  # the device is gone: the run ends
        except EngineError as error:
            self._emit(ev.Notice.of("evaluation failed: ", error))
            return True
        finally:
            self._emit(ev.Activity(None))
        self._emit(ev.Evaluated(dense, pruned, len(pruning.steps), pruning.ratio(), recovered))
        return True

    def _evaluations(
        self, pruning: Pruning, recovery: RecoveryRun | None, request: EvalRequest
    ) -> tuple[dict, dict, dict]:
        """The dense, pruned and (once recovered) recovered model's results."""
        request.check()
        tokenizer = pruning.tokenizer
        dense = self._dense_results.get(request)
        if dense is None:
            with pruning.dense_model() as model:
                dense = self._evaluate_one("the dense model", model, tokenizer, request)
            self._dense_results[request] = dense
        pruned = self._evaluate_one("the pruned model", pruning.model, tokenizer, request)
        recovered = {}
        if recovery is not None:
            model = recovery.merged()
            recovered = self._evaluate_one("the recovered model", model, tokenizer, request)
            del model
        return dense, pruned, recovered

    def _evaluate_one(self, what: str, model, tokenizer, request: EvalRequest) -> dict:
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

        return evaluate(model, tokenizer, request, self._stop_requested, progress)


__all__ = ["EvaluationPhase"]
