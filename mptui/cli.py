"""The ``mptui`` command. Parsing only: heavy imports wait until a run needs them, so
``mptui --help`` and ``mptui --version`` answer without loading torch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__

DEMO_DIR = Path(__file__).parent / "demo"


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr and exit status 2, like every other bad input."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"mptui: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mptui",
        description="Prune a causal LM with MultiPruner (blocks, MLP channels, attention heads), "
        "watch it happen and steer it. See also `mptui eval --help` (lm-eval scores) and "
        "`mptui export --help` (a smaller checkpoint).",
    )
    parser.add_argument("model", nargs="?", help="hub id or local model folder")
    parser.add_argument("--version", action="version", version=f"mptui {__version__}")
    parser.add_argument("--demo", action="store_true", help="use the bundled demo model and text")
    parser.add_argument("--headless", action="store_true", help="no UI: print a line per step")
    run = parser.add_argument_group("search")
    run.add_argument(
        "--target-ratio", type=float, default=None, help="target pruning ratio T (0.22)"
    )
    run.add_argument(
        "--distribution", default=None, help="shares a:b:c in the order of --order (44:52:4)"
    )
    run.add_argument("--order", default="blocks,mlp_channels,attn_heads", help="dimension order")
    run.add_argument("--mlp-group", type=int, default=None, help="MLP channels per step")
    run.add_argument("--attn-group", type=int, default=None, help="query channels per head step")
    run.add_argument("--block-count", type=int, default=None, help="stop blocks after K removals")
    run.add_argument(
        "--faithful",
        choices=("multipruner", "blockpruner"),
        default=None,
        help="reproduce the reference's sampling, precision, label mask and count",
    )
    run.add_argument("--guided", action="store_true", help="every commit waits for the user")
    parser.add_argument(
        "--theme", default=None, help="mptui-dark, mptui-light, mptui-high-contrast"
    )
    run.add_argument("--no-prefix-cache", action="store_true", help="naive scoring (compare)")
    calib = parser.add_argument_group("calibration")
    calib.add_argument("--calibration", default=None, help=".txt, .jsonl, .parquet or a dataset")
    calib.add_argument("--text-field", default="text", help="field of .jsonl/.parquet/datasets")
    calib.add_argument("--nsamples", type=int, default=None, help="documents to sample (0: all)")
    calib.add_argument("--seqlen", type=int, default=None, help="tokens per chunk (2048)")
    calib.add_argument("--batch-size", type=int, default=2, help="chunks per forward")
    calib.add_argument("--seed", type=int, default=42, help="sampler seed")
    device = parser.add_argument_group("device")
    device.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16")
    device.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if any)")
    device.add_argument("--device-map", default=None, help="as in transformers, e.g. auto")
    out = parser.add_argument_group("output")
    out.add_argument("--out", default=None, help="also write plan.json here")
    out.add_argument(
        "--export", default=None, metavar="DIR", help="export here (headless: when done; app: x)"
    )
    out.add_argument(
        "--session",
        default=None,
        help="session folder (default: a new one in ~/.local/share/mptui)",
    )
    out.add_argument("--resume", default=None, metavar="DIR", help="continue a session")
    evaluation = parser.add_argument_group("evaluation (the app's e key)")
    evaluation.add_argument(
        "--eval-tasks", default=None, help="lm-eval tasks (default: piqa,winogrande,hellaswag,…)"
    )
    evaluation.add_argument("--eval-include-path", default=None, help="folder of local tasks")
    evaluation.add_argument("--eval-limit", type=int, default=None, help="documents per task")
    evaluation.add_argument("--eval-text", default=None, help="text for a rolling perplexity")
    return parser


def demo_defaults(args: argparse.Namespace) -> None:
    """``--demo`` fills what the user left out with settings sized for the demo model."""
    args.model = args.model or str(DEMO_DIR / "model")
    args.calibration = args.calibration or str(DEMO_DIR / "calibration.txt")
    args.target_ratio = args.target_ratio if args.target_ratio is not None else 0.25
    args.distribution = args.distribution or "40:40:20"
    args.seqlen = args.seqlen or 128
    args.nsamples = args.nsamples if args.nsamples is not None else 16
    args.eval_text = args.eval_text or str(DEMO_DIR / "validation.txt")
    if not args.eval_tasks:
        from .demo.tasks import TASK, include_path
        from .runs import cache_dir

        args.eval_tasks = TASK
        args.eval_include_path = args.eval_include_path or str(include_path(cache_dir()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["eval"]:
        from .evaluate_cli import main as evaluate

        return evaluate(argv[1:])
    if argv[:1] == ["export"]:
        from .export_cli import main as export

        return export(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo:
        demo_defaults(args)
    if not args.model and not args.resume:
        parser.error("give a MODEL (hub id or folder), --demo, or --resume DIR")
    from .runs import run_from_args

    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
