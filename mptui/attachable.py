"""A headless run made attachable: it serves itself on its session folder's socket (and on TCP
when asked), so ``mptui attach`` can open the app on it later."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mptui.engine.api import EngineServer, EvalRequest


def serve_run(
    engine,
    session: Path,
    *,
    listen: str | None,
    export_dir: Path | None,
    eval_request: EvalRequest,
) -> EngineServer:
    """Start serving ``engine`` on ``session``'s socket, and on ``listen`` (``HOST:PORT``) when
    given (the caller closes the server when the run is over), and say on stdout how to attach.
    Once its search is over the engine lingers while a client is attached, so exports and
    evaluations from the app (of ``eval_request``, into ``export_dir``) work as in one process.
    Raises BadInput, before the engine starts, when ``listen`` cannot listen."""
    from mptui.engine.api import EngineServer, parse_listen

    server = EngineServer(
        engine,
        session,
        listen=parse_listen(listen) if listen else None,
        export_dir=export_dir,
        eval_request=eval_request,
        linger=True,
    )
    server.start()
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
    return server


def reachable(host: str) -> str:
    """How a client names a listening address: this machine's name for all interfaces, an IPv6
    address in brackets."""
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host
