"""The headless run of SPEC §8: one progress line per step on stdout, plan.json in ``--out``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from . import events as ev
from .plan import write_plan
from .runner import run_headless
from .setup import RunRequest


class LinePrinter:
    """Prints one line per committed step (and the few other things a log reader needs)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.error: str | None = None
        self._target = 0.0

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.Loaded):
            self._target = max(event.targets.values())
            self._print(
                f"loaded {event.model} ({event.architecture}, {event.num_layers} layers, "
                f"{event.params_dense:,} params, {event.tokens:,} calibration tokens); "
                f"dense ppl {event.dense_score:.4f}; groups mlp {event.mlp_group} / "
                f"attn {event.attn_group}"
            )
        elif isinstance(event, ev.StepCommitted):
            step = event.step
            self._print(
                f"step {step['index']:>3} {step['dimension']:<12} "
                f"{_structure_text(step['structure']):<14} ppl {event.score:10.4f}  "
                f"ratio {event.ratio:7.3%} (layers {event.ratio_layers:7.3%}, target "
                f"{self._target:.3%})  {event.candidates} cand {event.seconds:6.2f}s "
                f"{event.tokens / max(event.seconds, 1e-9):,.0f} tok/s  [{step['chosen_by']}]"
            )
        elif isinstance(event, ev.DimensionChanged) and event.dimension:
            self._print(f"dimension {event.dimension} (runs while ratio < {event.target:.4%})")
        elif isinstance(event, ev.Warning):
            print(f"mptui: note: {event.message}", file=self.err, flush=True)
        elif isinstance(event, ev.Error):
            self.error = event.message
        elif isinstance(event, ev.Finished) and event.plan:
            self._print(f"finished ({event.reason}) after {len(event.plan['steps'])} steps")

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def _structure_text(structure: dict) -> str:
    from .structures import Structure

    return Structure.from_dict(structure).id


class PlanWriter:
    """Rewrites plan.json after every commit and at the end, so a killed run leaves its plan."""

    def __init__(self, out_dir: Path, engine_session) -> None:
        self.path = Path(out_dir) / "plan.json"
        self._session = engine_session

    def __call__(self, event: ev.Event) -> None:
        session = self._session()
        if isinstance(event, (ev.StepCommitted, ev.StepUndone)) and session is not None:
            write_plan(self.path, session.plan())
        elif isinstance(event, ev.Finished) and event.plan:
            write_plan(self.path, event.plan)


def run(request: RunRequest, out_dir: Path, printer: LinePrinter | None = None) -> int:
    """Run to the end; exit status 0 when done, 1 when the engine reported an error."""
    from .runner import Engine

    printer = printer or LinePrinter()
    engine = Engine(request, [printer])
    engine.subscribe(PlanWriter(out_dir, lambda: engine.session))
    result = engine.run()
    if printer.error is not None:
        print(f"mptui: error: {printer.error}", file=printer.err, flush=True)
        return 1
    print(f"plan written to {Path(out_dir) / 'plan.json'}", file=printer.out, flush=True)
    return 0 if result.reason in ("done", "stopped") else 1


__all__ = ["LinePrinter", "PlanWriter", "run", "run_headless"]
