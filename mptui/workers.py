"""Several workers, through torch's own launcher.

``mptui MODEL --workers N`` starts N local workers with torch.distributed's elastic launcher
(what ``torchrun`` runs), each running ``python -m mptui`` with the same options. Started by a
launcher (``torchrun ... -m mptui MODEL --headless``, across machines with the usual rendezvous
options), a process joins the world: rank 0 leads the session, the others follow
(engine/workers/team.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from .flags import cli_words
from .places import default_session_dir
from .terminal import quiet_libraries

#: Options of the launching process that its workers must not see again.
_LAUNCH_ONLY = ("--workers",)
#: How a worker starts: ``-P`` keeps the current folder off the import path, so a worker started
#: from inside a clone of this repository imports the installed mptui, not the clone's folder.
WORKER_COMMAND = ("-P", "-m", "mptui")
#: How often the app looks for the workers' socket while they start.
ATTACH_POLL_SECONDS = 0.3


def gpu_shortage(workers: int, gpus_per_worker: int) -> str | None:
    """Why ``workers`` local workers of ``gpus_per_worker`` GPUs each cannot start here, if they
    cannot: said before any worker starts, not as N tracebacks from N workers."""
    import torch

    visible = torch.cuda.device_count()
    if visible == 0:
        if gpus_per_worker > 1:
            return f"--gpus-per-worker {gpus_per_worker} needs GPUs and none is visible"
        return None  # CPU workers
    needed = workers * gpus_per_worker
    if needed > visible:
        return (
            f"{workers} workers x {gpus_per_worker} GPUs need {needed} GPUs and {visible} "
            "are visible: lower --workers or --gpus-per-worker"
        )
    return None


def join_team(args: argparse.Namespace):
    """This worker's place in the world (its GPUs pinned first when it spans several)."""
    from mptui.engine.api import Team, pin_gpus

    if args.gpus_per_worker > 1:
        pin_gpus(args.gpus_per_worker)
    return Team.join(args.gpus_per_worker)


def follow(team, args: argparse.Namespace) -> int:
    """A follower leaves the user's interrupts to the leader, which stops them all cleanly."""
    from mptui.engine.api import follow as follow_leader

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    quiet_libraries()
    try:
        return follow_leader(team, args.gpus_per_worker)
    except RuntimeError as error:  # its GPU is lost: one line naming it, which the launcher quotes
        from mptui.engine.api import device_failed, is_device_failure

        if not is_device_failure(error):
            raise
        lost = device_failed(error, "working for rank 0", session_of(args), rank=team.rank)
        print(f"mptui: error: {cli_words(lost)}", file=sys.stderr, flush=True)
        return 1


def worker_argv(argv: list[str], session: Path | None) -> list[str]:
    """The launcher's own command line, less ``--workers N``, naming the session folder so
    that every worker (and every restart) agrees on it."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _LAUNCH_ONLY:
            skip = "=" not in arg
            continue
        out.append(arg)
    if session is not None:
        out += ["--session", str(session)]
    return out


def session_of(args: argparse.Namespace) -> Path:
    if args.resume:
        return Path(args.resume)
    return Path(args.session) if args.session else default_session_dir(args.model)


def launch_with_app(args: argparse.Namespace, argv: list[str]) -> int:
    """The app on a run of ``args.workers`` workers: they run headless in the background, in a
    session of their own (closing the terminal leaves them going, as a detach does), and the
    app attaches to rank 0. Quitting asks whether to detach or stop the run."""
    from mptui.engine.api import BadInput, attach, session_files

    from .attach_cli import run_and_report

    session = session_of(args)
    session.mkdir(parents=True, exist_ok=True)
    log = session / session_files.WORKERS_LOG
    command = [
        sys.executable, *WORKER_COMMAND, *worker_argv(argv, None if args.resume else session),
        "--headless", "--workers", str(args.workers),
    ]  # fmt: skip
    with log.open("a") as output:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    print(f"starting {args.workers} workers in the background (log: {log})", flush=True)
    while True:
        if process.poll() is not None:
            print(_tail(log), file=sys.stderr)
            return process.returncode
        try:
            remote = attach(str(session))
            break
        except BadInput:  # not serving yet
            time.sleep(ATTACH_POLL_SECONDS)
    return run_and_report(remote, str(session), args.theme)


def _tail(path: Path, lines: int = 5) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def launch(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``args.workers`` local workers to the end; a worker that dies is named in one line.

    The followers' stderr goes to files (rank 0's stays on the terminal: its progress lines),
    so that a follower that dies can be quoted."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    folder = session_of(args)
    session = None if args.resume else folder  # a new run's folder, named for every worker
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker unless told otherwise
    with tempfile.TemporaryDirectory(prefix="mptui-workers-") as logs:
        followers = {rank: Std.ERR for rank in range(1, args.workers)}
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=args.workers,
            run_id=uuid.uuid4().hex,
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            max_restarts=0,
            monitor_interval=0.5,
            logs_specs=DefaultLogsSpecs(log_dir=logs, redirects=followers),
        )
        try:
            elastic_launch(config, sys.executable)(*WORKER_COMMAND, *worker_argv(argv, session))
        except ChildFailedError as error:
            rank, failure = error.get_first_failure()
            if failure.exitcode == 2 and rank == 0:  # bad input: the leader already said why
                return 2
            how = (
                failure.signal_name() if failure.exitcode < 0 else f"exit status {failure.exitcode}"
            )
            why = last_error_line(Path(logs), rank) if failure.exitcode > 0 else None
            print(f"mptui: error: {death_notice(rank, how, why, folder)}", file=sys.stderr)
            return 1
    return 0


def death_notice(rank: int, how: str, why: str | None, folder: Path) -> str:
    """What to tell the user about worker ``rank`` that died: ``why`` (its last error line, when
    it exited with one), and whether ``--resume`` can continue (only a run that started can)."""
    from mptui.engine.api import SessionFolder, lost_device_of

    if why is not None and why.startswith(lost_device_of(rank)):
        return why  # its own line says what failed and how to resume
    if not SessionFolder(folder).holds_session():
        said = f": {why}" if why else "; its error is above"
        return f"worker rank {rank} died before the run started ({how}){said}"
    said = f" ({why})" if why else ""
    return (
        f"worker rank {rank} died ({how}){said}; the run stopped with its journal intact; "
        f"continue with: mptui --resume {folder}"
    )


def last_error_line(logs: Path, rank: int) -> str | None:
    """The last line a follower wrote on stderr (a traceback ends with the exception), without
    our own ``mptui: error:`` prefix; None for rank 0, whose stderr is the terminal's."""
    files = sorted(logs.glob(f"*/attempt_*/{rank}/stderr.log"))
    if not files:
        return None
    lines = [line.strip() for line in files[-1].read_text(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    return lines[-1].removeprefix("mptui: error: ") if lines else None
