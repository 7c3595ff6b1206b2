"""The headless run (docs/method.md §8): a line per step on stdout, plan.json in ``--out``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from . import events as ev
from .methods import method_named
from .plan import Plan, PlanStep
from .run_view import RunView
from .runner import Engine


class LinePrinter:
    """Prints one line per committed step (and the few other things a log reader needs)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.error: str | None = None
        self._target = 0.0
        self._view = RunView()  # the run as the app sees it: what its end line needs

    def __call__(self, event: ev.Event) -> None:
        self._view.apply(event)
        if isinstance(event, ev.Loaded):
            self._target = max(event.targets.values())
            groups = (  # only a method that narrows widths has group sizes to tell
                f"groups mlp {event.mlp_group} / attn {event.attn_group}; "
                if method_named(event.method).searches_widths
                else ""
            )
            self._print(
                f"loaded {event.model} ({event.architecture}, {event.num_layers} layers, "
                f"{event.params_dense:,} params, {event.tokens:,} calibration tokens); "
                f"dense ppl {event.dense_score:.4f}; {groups}method {event.method}"
            )
        elif isinstance(event, ev.StepCommitted):
            step = PlanStep.from_dict(event.step)
            self._print(
                f"step {step.index:>3} {step.dimension:<12} "
                f"{step.structure.id:<14} ppl {event.score:10.4f}  "
                f"ratio {event.ratio:7.3%} (layers {event.ratio_layers:7.3%}, target "
                f"{self._target:.3%})  {event.candidates} cand {event.seconds:6.2f}s "
                f"{event.tokens / max(event.seconds, 1e-9):,.0f} tok/s  [{step.chosen_by}]"
            )
        elif isinstance(event, ev.DimensionChanged) and event.dimension:
            self._print(f"dimension {event.dimension} (runs while ratio < {event.target:.4%})")
        elif isinstance(event, ev.Notice):
            print(f"mptui: note: {event.message}", file=self.err, flush=True)
        elif isinstance(event, ev.Error):
            self.error = event.message
        elif isinstance(event, ev.Finished) and event.plan:
            if self._view.overshoot:  # a ratio far past the target is no bug: say why
                self._print(self._view.overshoot)
            steps = len(Plan.from_dict(event.plan).steps)
            self._print(f"finished ({event.reason}) after {steps} steps")
        elif isinstance(event, ev.Finished) and event.reason == "stopped":
            self._print("finished (stopped) before the model was loaded")  # a Stop (SIGTERM)

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def run(engine: Engine, out_dir: Path, printer: LinePrinter | None = None) -> int:
    """Run ``engine`` to the end, printing a line per step (the engine writes plan.json to
    ``out_dir``). Exit status 0 when done or stopped, 1 when the engine reported an error."""
    printer = printer or LinePrinter()
    engine.subscribe(printer)
    engine.start()  # in its own thread, so this one is free to take signals (SIGTERM -> Stop)
    while not engine.join(timeout=0.5):
        pass
    result = engine.result
    if printer.error is not None:
        print(f"mptui: error: {printer.error}", file=printer.err, flush=True)
        return 1
    if result.plan:  # none when stopped while loading: nothing was written
        print(f"plan written to {Path(out_dir) / 'plan.json'}", file=printer.out, flush=True)
    return 0 if result.reason in ("done", "stopped") else 1


__all__ = ["LinePrinter", "run"]
