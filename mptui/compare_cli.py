"""``mptui compare``: sessions side by side, on the same calibration rows, the dense model once.

Parameters, ratio and calibration perplexity come from the plans (no model is loaded); with
``--eval-text`` and/or ``--tasks`` each session's pruned model is rebuilt and scored on the same
held-out text and lm-eval tasks, and the dense model is scored once, from the first load.
With ``--speed`` every row also gets its generation speed in llama.cpp (a temporary GGUF export)
and in transformers, and each session its speed-up over dense. Sessions of different models or
calibrations are refused unless ``--force``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mptui.engine.api import SpeedRequest

from .cli_common import (
    Parser,
    ProgressLines,
    add_device,
    add_dtype,
    add_lm_eval_options,
    print_error,
)

if TYPE_CHECKING:
    from mptui.engine.api import Comparison

__all__ = [
    "add_comparison_arguments",
    "build_parser",
    "check_output_file",
    "comparison_from_args",
    "from_args",
    "main",
    "table",
]


def add_comparison_arguments(parser: argparse.ArgumentParser) -> None:
    """The sessions and what to score them on: ``mptui compare`` and ``mptui report`` share
    these, and :func:`comparison_from_args` reads them."""
    parser.add_argument("sessions", nargs="+", metavar="SESSION", help="session folders")
    parser.add_argument(
        "--eval-text", default=None, metavar="FILE", help="held-out text for a rolling perplexity"
    )
    add_lm_eval_options(parser)
    add_dtype(parser, None, "each session's own")
    add_device(parser)
    parser.add_argument(
        "--force",
        action="store_true",
        help="compare sessions of different models or calibrations anyway (default: off)",
    )
    parser.add_argument(
        "--speed",
        action="store_true",
        help="also time greedy generation of every model in llama.cpp (a temporary GGUF) and "
        "in transformers, in tokens/s (default: off)",
    )
    parser.add_argument(
        "--speed-repeats",
        type=int,
        default=SpeedRequest.repeats,
        metavar="N",
        help="with --speed: runs per model, the median is kept (default: %(default)s)",
    )
    parser.add_argument(
        "--speed-gguf-type",
        default=None,
        metavar="TYPE",
        help="with --speed: f32, f16, bf16 or q8_0 for llama.cpp (default: the weights' half "
        "precision, f16 for float32 weights)",
    )


def comparison_from_args(args: argparse.Namespace) -> Comparison:
    """The :class:`~mptui.engine.output.comparison.Comparison` the arguments ask for; progress of
    anything long as lines on stderr. Raises the engine's one-line errors."""
    from mptui.engine.api import EvalRequest, compare_sessions

    evaluation = speed = None
    if args.eval_text or args.tasks or args.speed:
        from mptui.terminal import quiet_libraries, quiet_lm_eval

        quiet_libraries()
        if args.tasks:
            quiet_lm_eval()
    if args.eval_text or args.tasks:
        evaluation = EvalRequest.from_options(
            args.tasks, args.eval_text, args.seqlen, include_path=args.include_path,
            limit=args.limit, batch_size=args.batch_size,
        )  # fmt: skip
    if args.speed:
        speed = SpeedRequest(repeats=args.speed_repeats, gguf_type=args.speed_gguf_type)
    return compare_sessions(
        [Path(session) for session in args.sessions],
        evaluation,
        force=args.force,
        dtype=args.dtype if args.dtype != "auto" else None,
        device=args.device,
        progress=_stderr_line,
        counts=ProgressLines,
        speed=speed,
    )


def check_output_file(option: str, path: Path) -> None:
    """Refused before any work: a folder, or a file in a folder that does not exist."""
    from mptui.engine.api import BadInput

    if path.is_dir() or not path.parent.is_dir():
        raise BadInput(f"{option} {path} must be a file in a folder that exists")


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mptui compare", description=__doc__)
    add_comparison_arguments(parser)
    parser.add_argument(
        "--json", default=None, metavar="FILE", help="also write the table as JSON (default: none)"
    )
    return parser


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned: the first two (name, method) to the left, the numbers to the right."""
    widths = [max(len(cell) for cell in column) for column in zip(columns, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        aligned = [
            cell.ljust(width) if index < 2 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(aligned).rstrip()

    return "\n".join([line(columns), *(line(row) for row in rows)])


def main(argv: list[str]) -> int:
    """``mptui compare ARGS``: ``argv`` is ARGS."""
    parser = build_parser()
    return from_args(parser, parser.parse_args(argv))


def from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command on arguments ``parser`` parsed (its own, or ``mptui``'s subparser)."""
    from mptui.engine.api import EngineError, write_json_atomic

    try:
        if args.json:
            check_output_file("--json", Path(args.json))
        comparison = comparison_from_args(args)
    except EngineError as error:
        return print_error(error)
    print(f"{comparison.model}; calibration {comparison.calibration}")
    for sentence in comparison.forced:
        print(f"compared anyway (--force): {sentence}")
    print(table(comparison.columns(), comparison.rows()))
    for line in comparison.notes():
        print(line)
    if args.json:
        write_json_atomic(Path(args.json), comparison.to_dict())
    return 0
