"""From parsed arguments to a run: the headless printer or the app, over the same request.

Bad input is one line on stderr and exit status 2, before anything long starts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path


def quiet_libraries() -> None:
    """Progress bars and library chatter would interleave with our output or the screen."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def build_request(args: argparse.Namespace):
    """The engine request for ``args`` and ``--out`` (or None); raises the engine's BadInput."""
    from mptui.engine.calibration import CalibrationSpec
    from mptui.engine.settings import PruneSettings
    from mptui.engine.setup import RunRequest

    settings = PruneSettings.with_distribution(
        args.target_ratio if args.target_ratio is not None else 0.22,
        args.distribution,
        args.order,
        calibration=CalibrationSpec(
            source=args.calibration or "",
            nsamples=args.nsamples if args.nsamples is not None else 0,
            seqlen=args.seqlen or 2048,
            seed=args.seed,
            text_field=args.text_field,
        ),
        batch_size=args.batch_size,
        mlp_group=args.mlp_group,
        attn_group=args.attn_group,
        block_count=args.block_count,
        prefix_cache=not args.no_prefix_cache,
        faithful=args.faithful,
        guided=args.guided,
    )
    out_dir = Path(args.out) if args.out else None
    request = RunRequest(
        model=args.model,
        settings=settings,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        cache_dir=calibration_cache_dir(),
    )
    return request, out_dir


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mptui"


def calibration_cache_dir() -> Path:
    return cache_dir() / "calibration"


def default_session_dir(model: str) -> Path:
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    name = Path(model.rstrip("/")).name or "model"
    return data / "mptui" / "sessions" / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def open_session(args: argparse.Namespace):
    """The request and the locked session folder: a new session, or one to resume."""
    from mptui.engine.errors import BadInput
    from mptui.engine.journal import SessionFolder
    from mptui.engine.setup import preflight

    if args.resume:
        folder = SessionFolder(Path(args.resume))
        if not (folder.path / "settings.json").is_file():
            raise BadInput(f"'{folder.path}' is not an mptui session (no settings.json)")
        folder.lock()
        request = folder.read_request(cache_dir=calibration_cache_dir())
        out_dir = Path(args.out) if args.out else folder.path
    else:
        request, out_dir = build_request(args)
        folder = SessionFolder(
            Path(args.session) if args.session else default_session_dir(args.model)
        )
        out_dir = out_dir or folder.path
    request = dataclasses.replace(request, order_file=folder.order_file)
    preflight(request)
    if getattr(args, "eval_text", None) or getattr(args, "eval_include_path", None):
        app_eval_request(args, request.settings.calibration.seqlen).check()
    if getattr(args, "export", None):
        from mptui.engine.export import check_destination

        check_destination(Path(args.export))
    if not args.resume:
        folder.lock()
        folder.write_request(request)
    return request, folder, out_dir


def app_eval_request(args: argparse.Namespace, seqlen: int):
    """What the app's ``e`` evaluates, from the ``--eval-*`` options."""
    from mptui.engine.evaluate import EvalRequest

    return EvalRequest.from_options(
        args.eval_tasks, args.eval_text, seqlen, include_path=args.eval_include_path,
        limit=args.eval_limit,
    )  # fmt: skip


def run_from_args(args: argparse.Namespace) -> int:
    from mptui.engine.errors import EngineError
    from mptui.engine.journal import SessionRecorder
    from mptui.engine.plan import PlanWriter
    from mptui.engine.runner import Engine

    quiet_libraries()
    try:
        request, folder, out_dir = open_session(args)
    except EngineError as error:
        print(f"mptui: error: {error}", file=sys.stderr)
        return 2
    engine = Engine(request, linger=not args.headless)
    engine.subscribe(SessionRecorder(folder, engine.plan))  # first: on disk before shown
    if out_dir != folder.path:  # the session folder already holds plan.json
        engine.subscribe(PlanWriter(out_dir, engine.plan))
    stop_on_hangup(engine)
    try:
        if args.headless:
            from mptui.engine.headless import run

            print(f"session {folder.path}", flush=True)
            status = run(engine, out_dir)
            if args.export and status == 0:
                from .export_cli import export_live

                status = export_live(engine.session, Path(args.export))
            return status
        return run_app(engine, folder.path, args, request.settings.calibration.seqlen)
    finally:
        folder.unlock()


def stop_on_hangup(engine) -> None:
    """When the SSH link drops (SIGHUP), stop at the next candidate boundary and save."""
    from mptui.engine.commands import Stop

    signal.signal(signal.SIGHUP, lambda signum, frame: engine.send(Stop()))


@contextlib.contextmanager
def terminal_kept_logs_to(path: Path) -> Iterator[None]:
    """While the app owns the terminal, send everything else to ``path``.

    File descriptor 2 (C++ warnings from torch, stray prints of native code) and Python's
    logging and warnings go to the log file, so nothing draws over the screen. Textual draws
    on ``sys.__stderr__``, so that becomes a fresh handle on the terminal first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    saved_fd = os.dup(2)
    original = sys.__stderr__
    terminal = os.fdopen(os.dup(2), "w", encoding="utf-8")
    root = logging.getLogger()
    with path.open("a") as log_file:
        handler = logging.StreamHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        sys.__stderr__ = terminal
        os.dup2(log_file.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                yield
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            sys.__stderr__ = original
            terminal.close()
            root.removeHandler(handler)
            logging.captureWarnings(False)


def run_app(engine, session_dir: Path, args: argparse.Namespace, seqlen: int) -> int:
    from mptui.app.app import MptuiApp

    eval_request = app_eval_request(args, seqlen)
    export_dir = Path(args.export) if args.export else session_dir / "export"
    log = session_dir / "mptui.log"
    with terminal_kept_logs_to(log):
        MptuiApp(
            engine, theme_name=args.theme, eval_request=eval_request, export_dir=export_dir
        ).run()
    print(
        f"session {session_dir} (plan.json, journal, log); resume with mptui --resume {session_dir}"
    )
    return 0
