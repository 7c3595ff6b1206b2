"""``mptui report``: the comparison of ``mptui compare`` as a page to open and figures to paste.

One self-contained HTML file (the figures inline, nothing fetched when it is opened) with every
session's perplexity-vs-ratio curve on one plot, the per-layer map of what each removed, the
evaluation table and the settings; the figures also as PNG and PDF beside it. It takes the
arguments of ``mptui compare``: with ``--eval-text`` and/or ``--tasks`` the table has the
held-out perplexity and the lm-eval scores too, and with ``--speed`` a section "What the pruning
bought" has every model's generation speed in llama.cpp and transformers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_common import Parser, print_error
from .compare_cli import add_comparison_arguments, check_output_file, comparison_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mptui report", description=__doc__)
    add_comparison_arguments(parser)
    parser.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="the HTML file; the figures go beside it as STEM-perplexity and STEM-layers, "
        ".png and .pdf, STEM being its name without .html (required)",
    )
    return parser


def main(argv: list[str]) -> int:
    """``mptui report ARGS``: ``argv`` is ARGS."""
    parser = build_parser()
    return from_args(parser, parser.parse_args(argv))


def from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command on arguments ``parser`` parsed (its own, or ``mptui``'s subparser)."""
    from mptui.engine.api import EngineError

    from .report import write_report

    out = Path(args.out)
    try:
        check_output_file("--out", out)
        comparison = comparison_from_args(args)
        written = write_report(comparison, out)
    except EngineError as error:
        return print_error(error)
    except OSError as error:
        return print_error(f"the report could not be written: {error}", 1)
    for path in written:
        print(path)
    return 0
