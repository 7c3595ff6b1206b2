"""Several workers, through torch's own launcher.

``mptui MODEL --workers N`` starts N local workers with torch.distributed's elastic launcher
(what ``torchrun`` runs), each running ``python -m mptui`` with the same options. Started by a
launcher (``torchrun ... -m mptui MODEL --headless``, across machines with the usual rendezvous
options), a process joins the world: rank 0 leads the session, the others follow
(engine/team.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from .places import default_session_dir
from .terminal import quiet_libraries

#: Options of the launching process that its workers must not see again.
_LAUNCH_ONLY = ("--workers",)
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
    return follow_leader(team, args.gpus_per_worker)


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
        sys.executable, "-m", "mptui", *worker_argv(argv, None if args.resume else session),
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
    """Run ``args.workers`` local workers to the end; a worker that dies is named in one line."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    folder = session_of(args)
    session = None if args.resume else folder  # a new run's folder, named for every worker
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker unless told otherwise
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=args.workers,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "mptui", *worker_argv(argv, session))
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        how = failure.signal_name() if failure.exitcode < 0 else f"exit status {failure.exitcode}"
        if failure.exitcode == 2:  # bad input: the leader already said why
            return 2
        print(
            f"mptui: error: worker rank {rank} died ({how}); the run stopped with its journal "
            f"intact; continue with: mptui --resume {folder}",
            file=sys.stderr,
        )
        return 1
    return 0
