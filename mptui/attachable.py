"""A headless run made attachable: it serves itself on its session folder's socket (and on TCP
when asked), so ``mptui attach`` can open the app on it later. Its output says who attaches,
pauses, resumes, stops and detaches (:class:`ClientLines`)."""

from __future__ import annotations

import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mptui.engine.api import EngineServer, EvalRequest, RecoverySettings


def serve_run(
    engine,
    session: Path,
    *,
    listen: str | None,
    export_dir: Path | None,
    eval_request: EvalRequest,
    recovery: RecoverySettings | None = None,
) -> EngineServer:
    """Start serving ``engine`` on ``session``'s socket, and on ``listen`` (``HOST:PORT``) when
    given (the caller closes the server when the run is over), and say on stdout how to attach,
    then a line for each client's attach, pause, resume, stop and detach.
    Once its search is over the engine lingers while a client is attached, so exports and
    evaluations from the app (of ``eval_request``, into ``export_dir``) work as in one process,
    and so does its ``r`` (with ``recovery``, when the run was given recovery data).
    Raises BadInput, before the engine starts, when ``listen`` cannot listen."""
    from mptui.engine.api import EngineServer, parse_listen

    lines = ClientLines()
    server = EngineServer(
        engine,
        session,
        listen=parse_listen(listen) if listen else None,
        export_dir=export_dir,
        eval_request=eval_request,
        recovery=recovery,
        linger=True,
        on_client=lines,
    )
    try:
        server.start()
        _announce(engine, server, session)
    finally:
        lines.announced()  # a failed start too: the printer must not keep the process
    return server


def _announce(engine, server: EngineServer, session: Path) -> None:
    """Say how to attach (or why one cannot), and let the engine linger when one can."""
    # Reachable, the run stays after its search while someone attached looks at the result.
    engine.linger = server.unix_error is None or server.address is not None
    if server.unix_error is None:
        print(f"attach with: mptui attach {session}", flush=True)
    else:
        print(
            f"mptui: note: {server.unix_error}; mptui attach cannot reach this run", file=sys.stderr
        )
    if server.address is not None:
        host, port = server.address
        print(
            f"listening on {host}:{port}; attach with: mptui attach {reachable(host)}:{port} "
            f"--token {server.token}",
            flush=True,
        )


class ClientLines:
    """The server's lines about its clients (``client 2 paused the run``), printed on stdout in
    order by a thread of their own: the server's thread never waits on a slow reader of the
    output (a full pipe), and no line comes before the ``attach with`` line, though a client
    may attach as soon as the socket exists. Python joins the thread at exit, after the lines
    still queued."""

    def __init__(self) -> None:
        self._announced = threading.Event()
        self._printer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mptui-clients")
        self._printer.submit(self._announced.wait)  # every line waits behind this

    def __call__(self, line: str) -> None:
        # One write, newline included: the engine's lines come from another thread.
        self._printer.submit(print, f"{line}\n", end="", flush=True)

    def announced(self) -> None:
        """The run has said how to attach: print the lines that came meanwhile, and the rest
        as they come."""
        self._announced.set()


def reachable(host: str) -> str:
    """How a client names a listening address: this machine's name for all interfaces, an IPv6
    address in brackets."""
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host
