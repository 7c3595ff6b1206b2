"""From parsed arguments to a run: the headless printer or the app, over the same request.

Bad input is one line on stderr and exit status 2, before anything long starts.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path


def quiet_libraries() -> None:
    """Progress bars and library chatter would interleave with our output or the screen."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def build_request(args: argparse.Namespace):
    """The engine request for ``args`` and the output folder; raises the engine's BadInput."""
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
    out_dir = Path(args.out or "mptui-out")
    request = RunRequest(
        model=args.model,
        settings=settings,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        cache_dir=calibration_cache_dir(),
    )
    return request, out_dir


def calibration_cache_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mptui" / "calibration"


def run_from_args(args: argparse.Namespace) -> int:
    from mptui.engine.errors import EngineError
    from mptui.engine.setup import preflight

    quiet_libraries()
    try:
        request, out_dir = build_request(args)
        preflight(request)
    except EngineError as error:
        print(f"mptui: error: {error}", file=sys.stderr)
        return 2
    if args.headless:
        from mptui.engine.headless import run

        return run(request, out_dir)
    return run_app(request, out_dir, args.theme)


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


def run_app(request, out_dir: Path, theme: str | None) -> int:
    from mptui.app.app import MptuiApp
    from mptui.engine.headless import PlanWriter
    from mptui.engine.runner import Engine

    engine = Engine(request)
    engine.subscribe(PlanWriter(out_dir, lambda: engine.session))
    with terminal_kept_logs_to(out_dir / "mptui.log"):
        MptuiApp(engine, theme_name=theme).run()
    plan = out_dir / "plan.json"
    if plan.exists():
        print(f"plan written to {plan}; log in {out_dir / 'mptui.log'}")
    return 0
