"""The ``mptui`` command. Parsing only: heavy imports wait until a run needs them, so
``mptui --help`` and ``mptui --version`` answer without loading torch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .cli_common import Parser, print_error
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
    DEFAULT_SEED,
    DEFAULT_SEQLEN,
    DEFAULT_TARGET_RATIO,
    DEFAULT_TEXT_FIELD,
    DEFAULT_THEME,
)
from .engine.gguf_rules import GGUF_TYPES
from .engine.methods import DEFAULT_METHOD, METHODS

DEMO_DIR = Path(__file__).parent / "demo"


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
        "--demo", action="store_true", help="use the bundled demo model and text (default: off)"
    )
    parser.add_argument(
        "--headless", action="store_true", help="no UI: print a line per step (default: off)"
    )
    parser.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help="headless: also serve the run on TCP, behind a printed token, for mptui attach "
        "(default: the session folder's socket only)",
    )
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
        help=f"target pruning ratio T (default: {DEFAULT_TARGET_RATIO})",
    )
    run.add_argument(
        "--distribution",
        default=None,
        metavar="a:b:c",
        help=f"shares of T in the order of --order (default: {DEFAULT_DISTRIBUTION})",
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
        choices=("multipruner", "blockpruner"),
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
    parser.add_argument(
        "--theme",
        default=None,
        metavar="NAME",
        help=f"mptui-dark, mptui-light, mptui-high-contrast or your own (default: {DEFAULT_THEME})",
    )
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
        help=".txt, .jsonl, .parquet or a dataset",
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
        help=f"documents to sample, 0: all (default: {DEFAULT_NSAMPLES})",
    )
    calib.add_argument(
        "--seqlen",
        type=int,
        default=None,
        metavar="S",
        help=f"tokens per chunk (default: {DEFAULT_SEQLEN})",
    )
    calib.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="B",
        help="chunks per forward (default: from the memory budget)",
    )
    calib.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="sampler seed (default: %(default)s)"
    )
    device = parser.add_argument_group("device")
    device.add_argument(
        "--dtype",
        default=DEFAULT_DTYPE,
        help="auto, float32, float16, bfloat16 (default: %(default)s)",
    )
    device.add_argument(
        "--device", default=None, help="cuda, cuda:1, cpu (default: cuda if present)"
    )
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
    out.add_argument(
        "--gguf-type",
        choices=GGUF_TYPES,
        default=None,
        help="weight type of a GGUF --export (default: the weights' own precision)",
    )
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
        help="lm-eval tasks (default: the tasks of docs/method.md §5, none when only "
        "--eval-text is given)",
    )
    evaluation.add_argument(
        "--eval-include-path",
        default=None,
        metavar="DIR",
        help="folder of local tasks; demo: the demo's task, which --eval-tasks mptui_demo_order "
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
        help="text for a rolling perplexity; demo: the demo's held-out text",
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
    args.target_ratio = args.target_ratio if args.target_ratio is not None else 0.25
    args.distribution = args.distribution or "40:40:20"
    args.seqlen = args.seqlen if args.seqlen is not None else 128
    args.nsamples = args.nsamples if args.nsamples is not None else 16
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
        parser.error(str(error))


def recovery_started(session: Path) -> bool:
    """``--resume`` of a session whose recovery has started continues the recovery."""
    from .engine.api import session_files

    return (session / session_files.RECOVERY / session_files.RECOVERY_SETTINGS).is_file()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["eval"]:
        from .evaluate_cli import main as evaluate

        return evaluate(argv[1:])
    if argv[:1] == ["export"]:
        from .export_cli import main as export

        return export(argv[1:])
    if argv[:1] == ["compare"]:
        from .compare_cli import main as compare

        return compare(argv[1:])
    if argv[:1] == ["report"]:
        from .report_cli import main as report

        return report(argv[1:])
    if argv[:1] == ["attach"]:
        from .attach_cli import main as attach

        return attach(argv[1:])
    if argv[:1] == ["recover"]:
        from .recover_cli import main as recover

        return recover(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
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
    if args.resume and args.headless and recovery_started(Path(args.resume)):
        from .recover_cli import resume

        return resume(Path(args.resume), args.device, args.device_map)
    from .run_cli import run_from_args

    return run_from_args(args, argv)


if __name__ == "__main__":
    sys.exit(main())
