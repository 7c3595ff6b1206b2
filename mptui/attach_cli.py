"""``mptui attach``: the full app on a run served by a headless ``mptui`` (or a distributed
run's rank 0). Leaving detaches; the run goes on."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from .cli_common import Parser, add_theme, print_error


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mptui attach",
        description="Open the app on a running headless mptui. q or ctrl+d detaches (the run "
        "goes on; a paused run asks, r resumes it first); q then s stops the run.",
    )
    parser.add_argument(
        "target",
        metavar="SESSION|HOST:PORT",
        help="the run's session folder, or the address it printed for --listen",
    )
    parser.add_argument(
        "--token", default=None, help="the token the run printed for --listen (default: none)"
    )
    add_theme(parser)
    return parser


def main(argv: list[str]) -> int:
    """``mptui attach ARGS``: ``argv`` is ARGS."""
    parser = build_parser()
    return from_args(parser, parser.parse_args(argv))


def from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command on arguments ``parser`` parsed (its own, or ``mptui``'s subparser)."""
    from mptui.engine.api import EngineError, attach

    try:
        remote = attach(args.target, args.token)
    except EngineError as error:
        return print_error(error)
    return run_and_report(remote, args.target, args.theme)


def run_and_report(remote, target: str, theme: str | None) -> int:
    """The app on ``remote`` until the user leaves; then one line on what became of the run."""
    from mptui.engine.api import EngineState

    try:
        left_paused = run_attached(remote, theme)
    finally:
        remote.close()
    with contextlib.suppress(OSError):  # the terminal may be gone
        if left_paused:
            print(f"detached; {left_paused} and stays so (mptui attach {target} comes back)")
        elif remote.finished is not None and remote.run_state is not EngineState.RECOVERING:
            print(f"the run has ended ({remote.finished.reason}); session {target}")
        else:
            print(f"detached; the run goes on (mptui attach {target} comes back)")
    return 0


def run_attached(remote, theme: str | None) -> str | None:
    """The app on ``remote``; what it left paused when the user detached so (``the run is
    paused at step 5``), else None."""
    from mptui.app.app import MptuiApp
    from mptui.engine.api import session_files

    from .places import cache_dir
    from .terminal import terminal_kept_logs_to

    welcome = remote.welcome
    session = Path(welcome.session)
    log = session / session_files.LOG if session.is_dir() else cache_dir() / "attach.log"
    with terminal_kept_logs_to(log):
        return MptuiApp(
            remote,
            theme_name=theme,
            eval_request=welcome.eval_request,
            recovery=welcome.recovery,
            export_dir=Path(welcome.export_dir),
            attached_to=remote.peer,
            session_dir=session,
        ).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
