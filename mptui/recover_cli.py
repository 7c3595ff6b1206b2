"""``mptui recover SESSION|EXPORT --data FILE``: LoRA fine-tuning of a pruned model.

The reference's recipe by default (docs/method.md §10). The state goes into the session folder
every --save-every steps, so a stopped or killed run continues with ``mptui --resume DIR`` (or
the same command again). A session recovers in its own folder; an export in --session DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mptui.engine.api import (
    DEFAULT_LORA_ALPHA,
    DEFAULT_LORA_RANK,
    DEFAULT_LORA_TARGETS,
    DEFAULT_RECOVERY_BATCH,
    DEFAULT_RECOVERY_EVAL_EVERY,
    DEFAULT_RECOVERY_GRAD_ACCUM,
    DEFAULT_RECOVERY_LR,
    DEFAULT_RECOVERY_SAVE_EVERY,
    DEFAULT_RECOVERY_SEQLEN,
    DEFAULT_RECOVERY_STEPS,
    DEFAULT_RECOVERY_WARMUP,
)

from .cli_common import Parser, ProgressLines, add_device, add_dtype, add_seed, print_error

if TYPE_CHECKING:
    from mptui.engine.api import RecoverySource

#: Seconds between two progress lines (validations and the last step always get one).
LINE_INTERVAL = 10.0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mptui recover", description=__doc__)
    parser.add_argument("source", metavar="SESSION|EXPORT", help="a session folder or an export")
    parser.add_argument(
        "--data",
        metavar="FILE|DATASET",
        default=None,
        help=".jsonl/.parquet instruction rows "
        "(instruction, input, output), a .txt file, or a dataset name (default: none; with "
        "--demo, the demo's text)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="the demo's short recovery: its text, validation text and sizes (default: off)",
    )
    parser.add_argument(
        "--val-data",
        default=None,
        metavar="FILE",
        help="held-out data for the validation perplexity (default: the last rows of --data)",
    )
    add = parser.add_argument
    add(
        "--steps",
        metavar="N",
        type=int,
        default=DEFAULT_RECOVERY_STEPS,
        help="optimizer steps (default: %(default)s)",
    )
    add(
        "--lr",
        metavar="LR",
        type=float,
        default=DEFAULT_RECOVERY_LR,
        help="AdamW learning rate (default: %(default)s)",
    )
    add(
        "--warmup",
        metavar="N",
        type=int,
        default=DEFAULT_RECOVERY_WARMUP,
        help="warm-up steps (default: %(default)s)",
    )
    add(
        "--rank",
        metavar="R",
        type=int,
        default=DEFAULT_LORA_RANK,
        help="LoRA rank (default: %(default)s)",
    )
    add(
        "--alpha",
        metavar="A",
        type=float,
        default=DEFAULT_LORA_ALPHA,
        help="LoRA alpha (default: %(default)s)",
    )
    add(
        "--targets",
        metavar="a,b",
        default=",".join(DEFAULT_LORA_TARGETS),
        help="projections that get an adapter (default: %(default)s)",
    )
    add(
        "--batch-size",
        metavar="B",
        type=int,
        default=DEFAULT_RECOVERY_BATCH,
        help="examples per forward (default: %(default)s)",
    )
    add(
        "--grad-accum",
        metavar="K",
        type=int,
        default=DEFAULT_RECOVERY_GRAD_ACCUM,
        help="forwards per step (default: %(default)s)",
    )
    add(
        "--seqlen",
        metavar="S",
        type=int,
        default=DEFAULT_RECOVERY_SEQLEN,
        help="longest example in tokens (default: %(default)s)",
    )
    add(
        "--eval-every",
        metavar="N",
        type=int,
        default=DEFAULT_RECOVERY_EVAL_EVERY,
        help="steps between validations (default: %(default)s)",
    )
    add(
        "--save-every",
        metavar="N",
        type=int,
        default=DEFAULT_RECOVERY_SAVE_EVERY,
        help="steps between saves (default: %(default)s)",
    )
    add_seed(parser, "data order and adapter init")
    add("--gradient-checkpointing", action="store_true", help="less memory, slower (default: off)")
    add(
        "--session",
        default=None,
        metavar="DIR",
        help="state folder when recovering an export (default: a new session folder)",
    )
    add(
        "--export",
        default=None,
        metavar="DIR",
        help="write the recovered (merged) model here when done",
    )
    add(
        "--export-adapter",
        default=None,
        metavar="DIR",
        help="also write the unmerged peft adapter here",
    )
    add_dtype(parser, None, "the session's; bf16 on a GPU, fp32 on a CPU")
    add_device(parser)
    return parser


def settings_from_args(args: argparse.Namespace):
    """The options as given; with ``--demo``, the demo's recovery (mptui/demo/recovery.py)."""
    from mptui.engine.api import RecoverySettings, parse_targets

    if args.demo:
        from mptui.demo.recovery import demo_recovery_settings

        return demo_recovery_settings(args.data)

    return RecoverySettings(
        data=args.data,
        val_data=args.val_data,
        steps=args.steps,
        lr=args.lr,
        warmup=args.warmup,
        rank=args.rank,
        alpha=args.alpha,
        targets=parse_targets(args.targets),
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        seqlen=args.seqlen,
        eval_every=args.eval_every,
        save_every=args.save_every,
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
    )


def main(argv: list[str]) -> int:
    """``mptui recover ARGS``: ``argv`` is ARGS."""
    parser = build_parser()
    return from_args(parser, parser.parse_args(argv))


def from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command on arguments ``parser`` parsed (its own, or ``mptui``'s subparser)."""
    if not args.data and not args.demo:
        parser.error("give --data FILE|DATASET (or --demo)")
    from mptui.engine.api import EngineError, RecoveryFolder, RecoverySource
    from mptui.places import default_session_dir
    from mptui.terminal import quiet_libraries

    quiet_libraries()
    try:
        settings = settings_from_args(args)
        source = RecoverySource.find(Path(args.source)).loaded_as(args.dtype, args.device)
        if source.is_session:
            folder = source.path
        else:
            folder = Path(args.session or default_session_dir(f"{source.path}-recovered"))
        recovery = RecoveryFolder(folder)
        if recovery.started:
            settings, saved = recovery.read_settings()
            source = saved.on_device(args.device, None)
            print(f"continuing the recovery saved in {folder} (with its settings)", flush=True)
        return recover(folder, source, settings, args.export, args.export_adapter)
    except EngineError as error:
        return print_error(error)


def resume(folder: Path, device: str | None = None, device_map: str | None = None) -> int:
    """``mptui --resume DIR`` of a session whose recovery has started (headless); ``device`` or
    ``device_map``: load there instead of where the recovery started (its GPU failed, say)."""
    from mptui.engine.api import EngineError, RecoveryFolder
    from mptui.terminal import quiet_libraries

    quiet_libraries()
    try:
        settings, source = RecoveryFolder(folder).read_settings()
        return recover(folder, source.on_device(device, device_map), settings, None, None)
    except EngineError as error:
        return print_error(error)


def recover(
    folder: Path, source: RecoverySource, settings, export: str | None, export_adapter: str | None
) -> int:
    """Load, check, train (resuming from the last save), then export if asked."""
    from mptui.engine.api import (
        RecoveryFolder,
        SessionFolder,
        check_destination,
        check_recovery,
        device_failed,
        is_device_failure,
        prepare_recovery,
    )
    from mptui.places import calibration_cache_dir

    from .export_cli import writing_lines

    check_recovery(settings, source)
    RecoveryFolder(folder).load()  # a damaged checkpoint is one line, before anything is written
    for destination in (export, export_adapter):
        if destination:
            check_destination(Path(destination))
    session = SessionFolder(folder)
    session.lock()
    try:
        model, tokenizer, plan = source.load(
            on_shard=ProgressLines("loading the pruned model", "shards")
        )
        printer = RecoveryLines()
        run = prepare_recovery(
            model, tokenizer, settings, RecoveryFolder(folder), printer, source,
            calibration_cache_dir(),
        )  # fmt: skip
        print(f"session {folder}", flush=True)
        with stop_on_signals() as stop:
            try:
                reason = run.run(poll=lambda: stop["asked"])
            except RuntimeError as error:  # the state saved last is kept: --resume goes on
                if not is_device_failure(error):
                    raise
                during = f"recovering (optimizer step {run.step + 1})"
                return print_error(device_failed(error, during, folder), 1)
        if reason == "stopped":
            print(
                f"stopped at step {run.step} of {settings.steps} (saved); continue with "
                f"mptui --resume {folder}",
                flush=True,
            )
            return 0
        if export:
            from mptui.engine.api import describe_export

            result = run.export(plan, Path(export), progress=writing_lines())
            print(describe_export(result), flush=True)
        if export_adapter:
            run.save_adapter(Path(export_adapter))
            print(f"adapter written to {export_adapter}", flush=True)
    finally:
        session.unlock()
    return 0


@contextlib.contextmanager
def stop_on_signals() -> Iterator[dict]:
    """While training, SIGTERM, SIGHUP and Ctrl-C ask the run to stop after the optimizer step
    in progress (it saves first); a SIGKILL loses at most the steps since the last save."""
    flag = {"asked": False}

    def ask(signum, frame) -> None:
        flag["asked"] = True

    numbers = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    saved = {number: signal.signal(number, ask) for number in numbers}
    try:
        yield flag
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


class RecoveryLines:
    """Headless progress: a line at the start, every validation, the end and at most every
    :data:`LINE_INTERVAL` seconds in between; notices once training runs (an OOM fallback) as
    warnings (before that, the search's own printer shows them)."""

    def __init__(self, out=None) -> None:
        self.out = out
        self._last = 0.0
        self._validations: list[float] = []
        self._started = False

    def __call__(self, event) -> None:
        from mptui.engine.api import events
        from mptui.engine.api import recovery_events as rev

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
        elif isinstance(event, rev.RecoveryFinished) and len(self._validations) > 1:
            first, last = self._validations[0], self._validations[-1]
            line = f"recovery {event.reason}: validation perplexity {first:.4f} -> {last:.4f}"
        elif isinstance(event, rev.RecoveryStep):
            now = time.monotonic()
            if now - self._last >= LINE_INTERVAL or event.step == event.steps:
                self._last = now
                line = (
                    f"RECOVERING step {event.step}/{event.steps}: loss {event.loss:.4f}, "
                    f"lr {event.lr:.2e}, {event.tokens_per_s:,.0f} tokens/s, "
                    f"ETA {event.eta_s:.0f}s"
                )
        elif isinstance(event, events.Notice) and self._started:  # the search's are printed
            line = f"mptui: warning: {event.message}"
        if line is not None:
            print(line, file=self.out or sys.stdout, flush=True)
