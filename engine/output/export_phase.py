"""Writing the model of a run: a checkpoint folder or one GGUF file; once a recovery has
started, the recovered model (its adapter merged into a copy, training untouched).

The engine's ``Export`` command and a headless run's ``--export`` both write through
:func:`write_model`, so what an attached app exports and what the command line exports are the
same files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..control import commands as cmd
from ..control import events as ev
from ..control.events import ActivityKind
from ..errors import BadInput, DeviceFailed, EngineError
from ..recovery.run import RecoveryRun
from ..search.pruning import Pruning
from .export import ExportResult, export_model
from .gguf_export import GgufResult, export_gguf
from .gguf_rules import GGUF_TYPES

Progress = Callable[[int, int], None]


def check_export(command: cmd.Export) -> None:
    """Refuse an Export whose path, format or GGUF type the engine does not write (a client
    on the wire may send anything), before anything is written."""
    if not isinstance(command.path, str) or not command.path.strip():
        raise BadInput(f"export to {command.path!r}: give a path")
    if command.format not in cmd.EXPORT_FORMATS:
        raise BadInput(
            f"unknown export format {command.format!r}: choose {' or '.join(cmd.EXPORT_FORMATS)}"
        )
    if command.gguf_type is None:
        return
    if command.format != "gguf":
        raise BadInput(
            f"a GGUF type ({command.gguf_type!r}) goes with the gguf format only; a "
            f"{command.format} export keeps the weights' precision"
        )
    if command.gguf_type not in GGUF_TYPES:
        raise BadInput(
            f"unknown GGUF type {command.gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}"
        )


def write_model(
    pruning: Pruning,
    recovery: RecoveryRun | None,
    command: cmd.Export,
    progress: Progress | None = None,
) -> ExportResult | GgufResult:
    """The model as pruned so far (the recovered one once ``recovery`` has started) written as
    ``command`` asks; raises the engine's errors (or OSError) when it cannot be."""
    check_export(command)
    path, plan = Path(command.path), pruning.plan()
    if command.format == "gguf":
        model, tokenizer = pruning.model, pruning.tokenizer
        if recovery is not None:
            model, tokenizer = recovery.merged(), recovery.tokenizer
        return export_gguf(
            model, tokenizer, plan, path, gguf_type=command.gguf_type, progress=progress
        )
    if recovery is not None:
        return recovery.export(plan, path, progress)
    return export_model(pruning.model, pruning.tokenizer, plan, path, progress=progress)


def exported_event(result: ExportResult | GgufResult) -> ev.Exported:
    if isinstance(result, GgufResult):
        return ev.Exported(
            str(result.path), result.params, result.bytes, False, result.seconds,
            format="gguf", gguf_type=result.gguf_type, stand_ins=result.stand_ins,
        )  # fmt: skip
    return ev.Exported(str(result.path), result.params, result.bytes, result.stock, result.seconds)


class ExportPhase:
    """An Export command on the engine thread, between two candidates or optimizer steps: its
    progress as ``Activity`` events, ``Exported`` at the end; what cannot be written is the
    Notice ``export failed: ...`` and the run goes on. A lost device ends the run."""

    def __init__(self, emit: Callable[[ev.Event], None], failing_as) -> None:
        """``failing_as(label)``: the engine's context that turns a lost device into
        :class:`DeviceFailed` naming what it was doing."""
        self._emit = emit
        self._failing_as = failing_as

    def run(self, pruning: Pruning, recovery: RecoveryRun | None, command: cmd.Export) -> None:
        try:
            check_export(command)
        except BadInput as error:
            self._emit(ev.Notice.of("export failed: ", error))
            return
        label = f"exporting to {command.path}"
        self._emit(ev.Activity(ActivityKind.EXPORT, label))

        def progress(done: int, total: int) -> None:
            self._emit(ev.Activity(ActivityKind.EXPORT, label, done, total))

        try:
            with self._failing_as(label):
                result = write_model(pruning, recovery, command, progress)
        except DeviceFailed:
            raise
        except (EngineError, OSError) as error:
            self._emit(ev.Notice.of("export failed: ", error))
            return
        finally:
            self._emit(ev.Activity(None))
        self._emit(exported_event(result))


__all__ = ["ExportPhase", "check_export", "exported_event", "write_model"]
