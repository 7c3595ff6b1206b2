"""``mptui recover SESSION|EXPORT --data FILE``: LoRA fine-tuning of a pruned model.

The reference's recipe by default (docs/method.md §10). The state goes into the session folder
every --save-every steps, so a stopped or killed run continues with ``mptui --resume DIR`` (or
the same command again). A session recovers in its own folder; an export in --session DIR.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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

from .cli_common import (
    Parser,
    add_device,
    add_dtype,
    add_gguf_type,
    add_listen,
    add_seed,
    print_error,
)
from .flags import cli_words

#: Documents of the recovery data an export's load scores it on (it has no calibration set).
CALIBRATION_DOCUMENTS = 256


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
        metavar="DIR|FILE.gguf",
        help="write the recovered (merged) model here when done: a folder for transformers, "
        "or FILE.gguf for llama.cpp",
    )
    add_gguf_type(parser, "the GGUF file's weight type (default: the weights' own)")
    add(
        "--export-adapter",
        default=None,
        metavar="DIR",
        help="also write the unmerged peft adapter here",
    )
    add_dtype(parser, None, "the session's; bf16 on a GPU, fp32 on a CPU")
    add_device(parser)
    add_listen(parser, "also serve the recovery on TCP")
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
    """The command on arguments ``parser`` parsed (its own, or ``mptui``'s subparser): the
    session's engine, loaded and sent straight to the recovery, served so that ``mptui attach``
    shows it and steers it, like any headless run."""
    if not args.data and not args.demo:
        parser.error("give --data FILE|DATASET (or --demo)")
    from mptui.engine.api import BadInput, EngineError, parse_listen

    if args.listen:
        try:
            parse_listen(args.listen)
        except BadInput as error:
            parser.error(cli_words(error))

    from .headless import Outputs, run_headless
    from .run_cli import session_engine
    from .terminal import quiet_libraries

    quiet_libraries()
    try:
        settings, opened = open_recovery(args)
    except EngineError as error:
        return print_error(error)
    try:
        engine = session_engine(opened, recover=settings)
        return run_headless(
            engine, opened.folder.path, opened.out_dir, listen=args.listen,
            eval_request=default_eval_request(opened.request),
            outputs=Outputs(
                Path(args.export) if args.export else None, args.gguf_type,
                Path(args.export_adapter) if args.export_adapter else None,
            ),
        )  # fmt: skip
    finally:
        opened.folder.unlock()


def open_recovery(args: argparse.Namespace):
    """``(settings, opened)``: the recovery to run (a started one's own settings: it continues)
    and its session, locked. Everything is checked before anything is written: the data, the
    seqlen, a saved checkpoint, the destinations."""
    from mptui.engine.api import RecoveryFolder, RecoverySource, check_recovery
    from mptui.places import default_session_dir

    from .run_cli import check_export

    settings = settings_from_args(args)
    source = RecoverySource.find(Path(args.source))
    if source.is_session:
        folder = source.path
    else:
        folder = Path(args.session or default_session_dir(f"{source.path}-recovered"))
    recovery = RecoveryFolder(folder)
    if recovery.started:
        settings = recovery.read_settings()[0]
        print(f"continuing the recovery saved in {folder} (with its settings)", flush=True)
    check_recovery(settings, source)
    recovery.load()  # a damaged checkpoint is one line, before anything is written
    if args.export:
        check_export(Path(args.export), source.model_name())
    if args.export_adapter:
        from mptui.engine.api import check_destination

        check_destination(Path(args.export_adapter))
    return settings, open_recovery_session(folder, source, settings, args)


def open_recovery_session(folder: Path, source, settings, args: argparse.Namespace):
    """A session's own folder (resumed), or a new one for an export: its request loads the
    export and scores it on the recovery data (the export has no calibration set)."""
    from mptui.engine.api import (
        DEFAULT_DISTRIBUTION,
        DEFAULT_ORDER,
        DEFAULT_SEQLEN,
        DEFAULT_TARGET_RATIO,
        CalibrationSpec,
        PruneSettings,
        RecoveryFolder,
        RunRequest,
        SessionFolder,
        preflight,
        session_files,
    )
    from mptui.places import calibration_cache_dir

    from .run_cli import OpenedSession, reopen_session

    if (folder / session_files.SETTINGS).is_file():
        opened = reopen_session(folder, device=args.device, dtype=args.dtype)
        try:
            preflight(opened.request)
        except BaseException:
            opened.folder.unlock()
            raise
        return opened
    session = SessionFolder(folder)
    session.refuse_if_taken()
    text = calibration_text(settings.data)
    session.lock()
    try:
        path = RecoveryFolder(folder).write_calibration(text)
        calibration = CalibrationSpec(str(path), seqlen=min(settings.seqlen, DEFAULT_SEQLEN))
        request = RunRequest(
            model=str(source.path),
            settings=PruneSettings.with_distribution(
                DEFAULT_TARGET_RATIO, DEFAULT_DISTRIBUTION, DEFAULT_ORDER, calibration=calibration
            ),
            dtype=args.dtype,
            device=args.device,
            cache_dir=calibration_cache_dir(),
            order_file=session.order_file,
        )
        preflight(request)
        session.write_request(request)
    except BaseException:
        session.unlock()
        raise
    return OpenedSession(request, session, folder, None)


def calibration_text(data: str) -> str:
    """What the load of an export scores it on: the first documents of the recovery data."""
    from mptui.engine.api import calibration_text as text_of

    return text_of(data, CALIBRATION_DOCUMENTS)


def default_eval_request(request):
    """What an attached app's ``e`` evaluates: the rolling perplexity of the session's
    calibration text when it is a text file on this machine, else the default tasks."""
    from mptui.engine.api import EvalRequest

    spec = request.settings.calibration
    text = (
        spec.source if Path(spec.source).suffix == ".txt" and Path(spec.source).is_file() else None
    )
    return EvalRequest.from_options(None, text, spec.seqlen)
