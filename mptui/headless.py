"""A run without the app: the engine in its thread, served on its session's socket so
``mptui attach`` can open the app on it, a line per step (and per recovery milestone) on
stdout, and the exit status from how it ended.

``mptui MODEL --headless``, ``mptui --resume DIR --headless`` and ``mptui recover`` all run
here, whatever phase they are in: there is one driver, the engine.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from mptui.engine.api import (
    BadInput,
    EngineError,
    EvalRequest,
    RecoverySettings,
    RunView,
    commands,
    method_named,
)
from mptui.engine.api import events as ev
from mptui.engine.api import recovery_events as rev

from .cli_common import FAULT, print_error
from .export_cli import describe, export_format, writing_lines
from .flags import cli_words

if TYPE_CHECKING:  # loaded with torch, when a run starts
    from mptui.engine.api import Engine

#: Seconds between two recovery progress lines (validations and the last step always get one).
RECOVERY_LINE_INTERVAL = 10.0


@dataclass(frozen=True)
class Outputs:
    """What a headless run writes once it is done: ``export`` (a folder, or a ``.gguf`` file
    of ``gguf_type``) and, after a recovery, the unmerged adapter in ``adapter``."""

    export: Path | None = None
    gguf_type: str | None = None
    adapter: Path | None = None


def run_headless(
    engine: Engine,
    session_dir: Path,
    out_dir: Path,
    *,
    listen: str | None,
    eval_request: EvalRequest,
    outputs: Outputs = Outputs(),
    recovery: RecoverySettings | None = None,
) -> int:
    """Run ``engine`` to its end while serving it; 0 when done or stopped, 1 when it failed
    (or what it was to write could not be written), 2 when ``listen`` cannot listen. An app
    attached to it evaluates ``eval_request`` and recovers with ``recovery``."""
    from .attachable import serve_run

    stop_on_signals(engine, signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
    print(f"session {session_dir}", flush=True)
    try:
        server = serve_run(
            engine, session_dir, listen=listen, export_dir=outputs.export,
            eval_request=eval_request, recovery=recovery,
        )  # fmt: skip
    except BadInput as error:  # --listen could not listen; the engine never started
        return print_error(error)
    printer = LinePrinter()
    engine.subscribe(printer)
    engine.subscribe(RecoveryLines(session_dir))
    try:
        engine.start()  # in its own thread, so this one is free to take signals
        while not engine.join(timeout=0.5):
            pass
    finally:
        server.close()
    if printer.error is not None:
        return print_error(printer.error, FAULT)
    result = engine.result
    if result.plan:  # none when stopped while loading: nothing was written
        print(f"plan written to {Path(out_dir) / 'plan.json'}", flush=True)
    if result.reason != "done":
        return 0 if result.reason == "stopped" else FAULT
    return write_outputs(engine, outputs, session_dir)


def stop_on_signals(engine, *signals: signal.Signals) -> None:
    """A dropped SSH link (SIGHUP), a ``kill`` (SIGTERM) or Ctrl-C stops at the next candidate
    (or optimizer step) and saves. The handler only queues a Stop: the engine runs in another
    thread, so the queue's lock is never held by the thread the handler interrupts."""
    for number in signals:
        signal.signal(number, lambda signum, frame: engine.send(commands.Stop()))


def write_outputs(engine: Engine, outputs: Outputs, session_dir: Path) -> int:
    """The export and the adapter a finished run was asked for, written from the model in
    memory (the recovered one after a recovery) through the engine's own export."""
    from mptui.engine.api import device_failed, is_device_failure, write_model

    pruning, recovery = engine.pruning, engine.recovery
    if outputs.export is not None:
        if pruning is None or (not pruning.steps and recovery is None):
            return print_error("nothing was removed, so nothing is exported", FAULT)
        format_ = export_format(outputs.export, None, None)  # told by the name, as on `export`
        command = commands.Export(str(outputs.export), format_, outputs.gguf_type)
        try:
            result = write_model(pruning, recovery, command, writing_lines())
        except (EngineError, OSError) as error:
            return print_error(f"the export failed: {cli_words(error)}", FAULT)
        except RuntimeError as error:
            if not is_device_failure(error):
                raise
            return print_error(
                device_failed(error, f"exporting to {outputs.export}", session_dir), FAULT
            )
        print(describe(result), flush=True)
    if outputs.adapter is not None and recovery is not None:
        try:
            recovery.save_adapter(outputs.adapter)
        except (EngineError, OSError) as error:
            return print_error(f"the adapter could not be written: {cli_words(error)}", FAULT)
        print(f"adapter written to {outputs.adapter}", flush=True)
    return 0


def write_line(out: TextIO, text: str) -> None:
    """One write per line (``print`` makes two): the server's lines about clients, written from
    another thread, never land between a line and its newline."""
    out.write(text + "\n")
    out.flush()


class LinePrinter:
    """The search's lines: one per committed step, and the few other things a log reader
    needs (the load, each dimension, notes on stderr, the end)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.error: str | None = None
        self._target = 0.0
        self._view = RunView()  # the run as the app sees it: what its end line needs

    def __call__(self, event) -> None:
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
            self._print_step(event)
        elif isinstance(event, ev.DimensionChanged) and event.dimension:
            self._print(f"dimension {event.dimension} (runs while ratio < {event.target:.4%})")
        elif isinstance(event, ev.Notice):
            write_line(self.err, f"mptui: note: {cli_words(event)}")
        elif isinstance(event, ev.Error):
            self.error = cli_words(event)
        elif isinstance(event, ev.Finished) and event.plan:
            if self._view.overshoot:  # a ratio far past the target is no bug: say why
                self._print(self._view.overshoot)
            self._print(f"finished ({event.reason}) after {len(event.plan['steps'])} steps")
        elif isinstance(event, ev.Finished) and event.reason == "stopped":
            self._print("finished (stopped) before the model was loaded")  # a Stop (SIGTERM)

    def _print_step(self, event) -> None:
        step = event.step
        self._print(
            f"step {step.index:>3} {step.dimension:<12} "
            f"{step.structure.id:<14} ppl {event.score:10.4f}  "
            f"ratio {event.ratio:7.3%} (layers {event.ratio_layers:7.3%}, target "
            f"{self._target:.3%})  {event.candidates} cand {event.seconds:6.2f}s "
            f"{event.tokens / max(event.seconds, 1e-9):,.0f} tok/s  [{step.chosen_by}]"
        )

    def _print(self, text: str) -> None:
        write_line(self.out, text)


class RecoveryLines:
    """The recovery's lines: its start, every validation, its end and at most every
    :data:`RECOVERY_LINE_INTERVAL` seconds in between; notices once training runs (an OOM
    fallback) as warnings (before that, :class:`LinePrinter` shows them as notes)."""

    def __init__(self, session_dir: Path | None = None, out: TextIO | None = None) -> None:
        """``session_dir``: named in the line of a stopped recovery, which ``--resume``
        continues."""
        self.session_dir = session_dir
        self.out = out
        self._last = 0.0
        self._validations: list[float] = []
        self._started = False

    def __call__(self, event) -> None:
        line = None
        if isinstance(event, rev.RecoveryStarted):
            self._started = True
            start = f" from step {event.step}" if event.step else ""
            line = (
                f"recovering {event.steps} steps{start}: {event.trainable:,} adapter parameters "
                f"on {event.params:,}; {event.examples} training, {event.val_examples} "
                "validation examples"
            )
        elif isinstance(event, rev.RecoveryValidated):
            self._validations.append(event.perplexity)
            line = f"step {event.step}: validation perplexity {event.perplexity:.4f}"
        elif isinstance(event, rev.RecoveryFinished):
            line = self._end_line(event)
        elif isinstance(event, rev.RecoveryStep):
            now = time.monotonic()
            if now - self._last >= RECOVERY_LINE_INTERVAL or event.step == event.steps:
                self._last = now
                line = (
                    f"RECOVERING step {event.step}/{event.steps}: loss {event.loss:.4f}, "
                    f"lr {event.lr:.2e}, {event.tokens_per_s:,.0f} tokens/s, "
                    f"ETA {event.eta_s:.0f}s"
                )
        elif isinstance(event, ev.Notice) and self._started:
            line = f"mptui: warning: {cli_words(event)}"
        if line is not None:
            write_line(self.out or sys.stdout, line)

    def _end_line(self, event) -> str | None:
        if event.reason == "stopped":
            again = f"; continue with mptui --resume {self.session_dir}" if self.session_dir else ""
            return f"stopped at step {event.step} of {event.steps} (saved){again}"
        if len(self._validations) > 1:
            first, last = self._validations[0], self._validations[-1]
            return f"recovery {event.reason}: validation perplexity {first:.4f} -> {last:.4f}"
        return None


__all__ = ["LinePrinter", "Outputs", "RecoveryLines", "run_headless", "stop_on_signals"]
