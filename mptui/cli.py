"""The ``mptui`` command. Parsing only: heavy imports wait until a run needs them, so
``mptui --help`` and ``mptui --version`` answer without loading torch."""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import sys
from pathlib import Path

from . import __version__
from .cli_common import (
    Parser,
    add_device,
    add_dtype,
    add_gguf_type,
    add_listen,
    add_seed,
    add_theme,
    did_you_mean,
    print_error,
)
from .engine.defaults import (
    COMPILE_MODES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_COMPILE,
    DEFAULT_DISTRIBUTION,
    DEFAULT_DTYPE,
    DEFAULT_FAST_MARGIN,
    DEFAULT_FAST_TOLERANCE,
    DEFAULT_NSAMPLES,
    DEFAULT_ORDER,
    DEFAULT_SEQLEN,
    DEFAULT_TARGET_RATIO,
    DEFAULT_TEXT_FIELD,
)
from .engine.search.methods import DEFAULT_METHOD, FAITHFUL_MODES, METHODS
from .flags import cli_words

DEMO_DIR = Path(__file__).parent / "demo"

#: What ``--demo`` sets unless the option is given, where it differs from the default: sized
#: for the demo model. ``--help`` shows each beside the option's own default.
DEMO_SETTINGS = {"target_ratio": 0.25, "distribution": "40:40:20", "seqlen": 128, "nsamples": 16}


def demo_says(name: str) -> str:
    """``; --demo: 128``, for the help of an option whose value ``--demo`` changes."""
    return f"; --demo: {DEMO_SETTINGS[name]}"


def build_parser() -> argparse.ArgumentParser:
    """Every option's help ends with its default, ``(default: X)``, as README's table shows it
    (tests/end_to_end/test_cli_help.py compares the two)."""
    parser = Parser(
        prog="mptui",
        description="Prune a causal LM with MultiPruner (blocks, MLP channels, attention heads), "
        "watch it happen and steer it. See also `mptui eval --help` (lm-eval scores), "
        "`mptui export --help` (a smaller checkpoint), `mptui compare --help` (sessions side by "
        "side), `mptui report --help` (the comparison as an HTML page and figures) and "
        "`mptui attach --help` (the app on a headless run).",
    )
    parser.add_argument("model", nargs="?", metavar="MODEL", help="hub id or local model folder")
    parser.add_argument("--version", action="version", version=f"mptui {__version__}")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="use the bundled demo model and text, and the settings sized for it that the "
        "options below name after '--demo:' (default: off)",
    )
    parser.add_argument(
        "--headless", action="store_true", help="no UI: print a line per step (default: off)"
    )
    add_listen(parser, "headless: also serve the run on TCP")
    run = parser.add_argument_group("search")
    run.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        metavar="NAME",
        help=f"the search, one of {', '.join(METHODS)}; docs/method.md §11 (default: %(default)s)",
    )
    run.add_argument(
        "--target-ratio",
        type=float,
        default=None,
        metavar="T",
        help=f"target pruning ratio T{demo_says('target_ratio')} (default: {DEFAULT_TARGET_RATIO})",
    )
    run.add_argument(
        "--distribution",
        default=None,
        metavar="a:b:c",
        help=f"shares of T in the order of --order{demo_says('distribution')} "
        f"(default: {DEFAULT_DISTRIBUTION})",
    )
    run.add_argument(
        "--order",
        default=",".join(DEFAULT_ORDER),
        metavar="d1,d2,d3",
        help="dimension order (default: %(default)s)",
    )
    run.add_argument(
        "--mlp-group",
        type=int,
        default=None,
        metavar="G",
        help="MLP channels per step (default: reference value, else ~9%% of the width)",
    )
    run.add_argument(
        "--attn-group",
        type=int,
        default=None,
        metavar="H",
        help="query channels per head step (default: reference value, else one KV group)",
    )
    run.add_argument(
        "--block-count",
        type=int,
        default=None,
        metavar="K",
        help="stop blocks after K removals (default: by ratio)",
    )
    run.add_argument(
        "--faithful",
        choices=FAITHFUL_MODES,
        default=None,
        help="reproduce the reference's sampling, precision, label mask and count (default: off)",
    )
    run.add_argument(
        "--guided", action="store_true", help="every commit waits for the user (default: off)"
    )
    run.add_argument(
        "--fast",
        action="store_true",
        help="successive halving: rule out candidates on a few rows first, an approximation "
        "(default: off)",
    )
    run.add_argument(
        "--fast-margin",
        type=float,
        default=DEFAULT_FAST_MARGIN,
        metavar="Z",
        help="with --fast: standard errors behind the leader that rule a candidate out "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--fast-tolerance",
        type=float,
        default=DEFAULT_FAST_TOLERANCE,
        metavar="T",
        help="with --fast: also rule out a candidate that cannot beat the leader's perplexity "
        "by more than this share, 0 for none (default: %(default)s)",
    )
    add_theme(parser)
    run.add_argument(
        "--no-prefix-cache", action="store_true", help="naive scoring (compare) (default: off)"
    )
    run.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default=DEFAULT_COMPILE,
        help="torch.compile the scoring sub-blocks: auto (on a GPU), off, or a backend "
        "(default: %(default)s)",
    )
    calib = parser.add_argument_group("calibration")
    calib.add_argument(
        "--calibration",
        default=None,
        metavar="PATH",
        help=".txt, .jsonl, .parquet or a dataset; --demo: the demo's text",
    )
    calib.add_argument(
        "--text-field",
        default=DEFAULT_TEXT_FIELD,
        metavar="F",
        help="field of .jsonl/.parquet/datasets (default: %(default)s)",
    )
    calib.add_argument(
        "--nsamples",
        type=int,
        default=None,
        metavar="N",
        help=f"documents to sample, 0: all{demo_says('nsamples')} (default: {DEFAULT_NSAMPLES})",
    )
    calib.add_argument(
        "--seqlen",
        type=int,
        default=None,
        metavar="S",
        help=f"tokens per chunk{demo_says('seqlen')} (default: {DEFAULT_SEQLEN})",
    )
    calib.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="B",
        help="chunks per forward (default: from the memory budget)",
    )
    add_seed(calib, "sampler seed")
    device = parser.add_argument_group("device")
    add_dtype(device, DEFAULT_DTYPE)
    add_device(device, "cuda, cuda:1, cpu")
    device.add_argument("--device-map", default=None, help="as in transformers, e.g. auto")
    device.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="score candidates on N local workers, each with a replica of the model, "
        "through torch.distributed (default: one process)",
    )
    device.add_argument(
        "--gpus-per-worker",
        type=int,
        default=1,
        metavar="K",
        help="spread each worker's replica over K GPUs (default: %(default)s)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="also write plan.json here (default: the session folder)",
    )
    out.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help="export here: a folder for transformers, or FILE.gguf for llama.cpp (headless: "
        "when done; app: x)",
    )
    add_gguf_type(out, "weight type of a GGUF --export (default: the weights' own precision)")
    out.add_argument(
        "--session",
        default=None,
        metavar="DIR",
        help="session folder (default: a new folder in ~/.local/share/mptui/sessions/)",
    )
    out.add_argument("--resume", default=None, metavar="DIR", help="continue a session")
    evaluation = parser.add_argument_group("evaluation (the app's e key)")
    evaluation.add_argument(
        "--eval-tasks",
        default=None,
        metavar="a,b",
        help="lm-eval tasks; --demo: the demo's task (default: the tasks of docs/method.md §5, "
        "none when only --eval-text is given)",
    )
    evaluation.add_argument(
        "--eval-include-path",
        default=None,
        metavar="DIR",
        help="folder of local tasks; --demo: the demo's task, which --eval-tasks mptui_demo_order "
        "also brings alone",
    )
    evaluation.add_argument(
        "--eval-limit",
        type=int,
        default=None,
        metavar="N",
        help="documents per task (default: all)",
    )
    evaluation.add_argument(
        "--eval-text",
        default=None,
        metavar="FILE",
        help="text for a rolling perplexity; --demo: the demo's held-out text",
    )
    recovery = parser.add_argument_group("recovery (the app's r key; see mptui recover --help)")
    recovery.add_argument(
        "--recover-data",
        default=None,
        metavar="FILE",
        help="what r fine-tunes on after the search (default: none; with --demo, the demo's text)",
    )
    recovery.add_argument(
        "--recover",
        action="store_true",
        help="on an export (MODEL is one): recover it at once, no search (default: off)",
    )
    return parser


def demo_defaults(args: argparse.Namespace) -> None:
    """``--demo`` fills what the user left out with settings sized for the demo model."""
    args.model = args.model or str(DEMO_DIR / "model")
    args.calibration = args.calibration or str(DEMO_DIR / "calibration.txt")
    for name, value in DEMO_SETTINGS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.eval_text = args.eval_text or str(DEMO_DIR / "validation.txt")
    args.recover_data = args.recover_data or str(DEMO_DIR / "calibration.txt")
    if not args.eval_tasks:
        from .demo.tasks import TASK, include_path
        from .places import cache_dir

        args.eval_tasks = TASK
        args.eval_include_path = args.eval_include_path or str(include_path(cache_dir()))


def check_listen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--listen`` is for a headless run and reads as HOST:PORT, checked before the session
    folder is made."""
    from .engine.api import BadInput, parse_listen

    if not args.headless:
        parser.error("--listen serves a headless run: add --headless")
    try:
        parse_listen(args.listen)
    except BadInput as error:
        parser.error(cli_words(error))


#: ``mptui COMMAND ...``: each subcommand and the module whose ``main`` runs it.
SUBCOMMANDS = {
    "eval": "evaluate_cli",
    "export": "export_cli",
    "compare": "compare_cli",
    "report": "report_cli",
    "attach": "attach_cli",
    "recover": "recover_cli",
}


def build_command_parser() -> argparse.ArgumentParser:
    """``mptui COMMAND ...``: argparse subparsers, each made from the command's own parser (its
    module's ``build_parser``), so ``mptui eval --help`` and ``mptui eval`` read the same options.
    ``mptui MODEL`` is parsed by :func:`build_parser` instead: a subparser would take MODEL for a
    command."""
    parser = Parser(prog="mptui", description="The subcommands of mptui.", add_help=False)
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=Parser, required=True
    )
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f".{module_name}", __package__)
        own = module.build_parser()
        sub = commands.add_parser(
            name, parents=[own], add_help=False, description=own.description, help=own.prog
        )
        sub.set_defaults(command_parser=sub, command_run=module.from_args)
    return parser


def quick_exit() -> None:
    """At the exit of this process, freeze the garbage collector's objects rather than leave
    them to the interpreter's last collections: with torch and transformers loaded those take
    most of a second and free nothing an ending process needs. The exit is otherwise as usual
    (exit functions run, threads are joined, files are flushed and closed)."""
    atexit.register(gc.freeze)  # registered first, so it runs after every later exit function


def mistyped_command(word: str) -> str | None:
    """The one-line error for ``mptui exprot ...``: a first word close to a subcommand that is
    no path (``mptui MODEL`` takes a hub id or a folder there, and a hub id has a slash)."""
    if not word or word.startswith("-") or word in SUBCOMMANDS or "/" in word or "\\" in word:
        return None
    hint = did_you_mean(word, SUBCOMMANDS)
    if not hint or Path(word).exists():
        return None
    return f"unknown command '{word}'{hint}"


def check_method(parser: argparse.ArgumentParser, method: str) -> None:
    """An unknown ``--method`` is refused with the closest name, before anything loads."""
    if method not in METHODS:
        hint = did_you_mean(method, METHODS)
        parser.error(f"--method '{method}' must be one of {', '.join(METHODS)}{hint}")


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command of this process, not a call from Python: see quick_exit
        quick_exit()
        argv = sys.argv[1:]
    if argv[:1] and argv[0] in SUBCOMMANDS:
        args = build_command_parser().parse_args(argv)
        return args.command_run(args.command_parser, args)
    parser = build_parser()
    mistyped = mistyped_command(argv[0]) if argv else None
    if mistyped is not None:
        parser.error(mistyped)
    args = parser.parse_args(argv)
    check_method(parser, args.method)
    if args.demo:
        from .engine.api import EngineError

        try:
            demo_defaults(args)
        except EngineError as error:  # its task file could not be written to the cache: a fault
            return print_error(error, 1)
    if not args.model and not args.resume:
        parser.error("give a MODEL (hub id or folder), --demo, or --resume DIR")
    if args.listen:
        check_listen(parser, args)
    for option, value in (("--workers", args.workers), ("--gpus-per-worker", args.gpus_per_worker)):
        if value is not None and value < 1:
            parser.error(f"{option} {value} must be 1 or more")
    from .run_cli import run_from_args

    return run_from_args(args, argv)


if __name__ == "__main__":
    sys.exit(main())
