"""The client side of a served run: an engine-like object over a socket.

:class:`RemoteEngine` has the interface the app drives an :class:`~.runner.Engine` with
(``start``, ``send``, ``subscribe``, ``join``, ``state``), so the app runs on a
headless run as it runs in one process. Its events come from the server's snapshot, then live;
``join`` returns once the run has closed the connection. Its reading thread answers the server's
pings itself, so a finished run stays for as long as this side reads. Torch-free.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from ..errors import BadInput, Message, resume, setting
from ..session.files import PLAN, RECOVERY_LOG, SETTINGS, SOCKET
from ..session.lock import lock_holder
from . import events as ev
from . import wire
from .commands import Command
from .events import EngineState
from .run_view import RunView
from .server import unix_address
from .wire import Welcome

Subscriber = Callable[[ev.Event], None]

log = logging.getLogger("mptui.remote")

CONNECT_TIMEOUT_S = 10.0
_HOST_PORT = re.compile(r"^\[?([^\[\]]+?)\]?:(\d+)$")


class RemoteEngine:
    """A served run, seen from a client. Build it with :func:`attach`."""

    def __init__(self, sock: socket.socket, welcome: Welcome) -> None:
        self.welcome = welcome
        self._sock = sock
        self._reader = sock.makefile("rb")
        self._send_lock = threading.Lock()
        self._subscribers: list[Subscriber] = []
        self._view = RunView()  # what this side knows of the run: its state, its end
        self._thread: threading.Thread | None = None

    @property
    def peer(self) -> str:
        """``process PID on HOST``: who runs the engine."""
        return f"process {self.welcome.pid} on {self.welcome.host}"

    @property
    def state(self) -> EngineState:
        """The run's last state; ENDED once the connection is closed, however it closed (the
        run's last event, the run killed, a detach): no command sent can be read any more."""
        closed = self._thread is not None and not self._thread.is_alive()
        return EngineState.ENDED if closed else self._view.state

    @property
    def run_state(self) -> EngineState:
        """The last state the run itself reported, whatever became of this connection (a
        recovery goes on after this side detached)."""
        return self._view.state

    @property
    def finished(self) -> ev.Finished | None:
        """The run's ``Finished`` event, once it has come."""
        return self._view.ended

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def send(self, command: Command) -> None:
        """Send ``command`` to the run; after the run has gone, nothing happens."""
        self._send(wire.encode_command(command))

    def _send(self, line: bytes) -> None:
        with self._send_lock, contextlib.suppress(OSError):
            self._sock.sendall(line)

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self._receive, name="mptui-remote", daemon=True)
        self._thread.start()
        return self._thread

    def join(self, timeout: float | None = None) -> bool:
        """True once the run has closed the connection (or this side detached)."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def close(self) -> None:
        """Detach: the run goes on."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.close()
        self._sock.close()

    def _receive(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in self._reader:
                try:
                    kind, event = wire.decode(line)
                except BadInput:
                    continue  # a newer server's line this version does not know
                if kind == "ping":  # after the search: the run stays while we answer
                    number = wire.ping_number(event)
                    if number is not None:
                        self._send(wire.encode_pong(number))
                    continue
                if kind != "event":
                    continue
                self._view.apply(event)
                for subscriber in list(self._subscribers):
                    try:
                        subscriber(event)
                    except Exception:  # one bad subscriber must not end the link
                        log.exception("event subscriber failed on %s", type(event).__name__)


def attach(target: str, token: str | None = None) -> RemoteEngine:
    """Connect to a served run: a session folder (its ``engine.sock``) or ``HOST:PORT`` with
    the token the run printed. Raises :class:`BadInput` with one line when it cannot."""
    folder = Path(target).expanduser()
    if folder.is_dir():
        sock = _connect_unix(folder)
    else:
        match = _HOST_PORT.match(target)
        if not match:
            raise BadInput(f"'{target}' is neither a session folder nor HOST:PORT")
        if not token:
            raise BadInput(
                f"attaching to {target} needs ", setting("token"),
                " (the run printed it at start)",
            )  # fmt: skip
        sock = _connect_tcp(match.group(1), int(match.group(2)))
    try:
        return _handshake(sock, target, token)
    except BaseException:
        sock.close()
        raise


def _connect_unix(folder: Path) -> socket.socket:
    path = folder / SOCKET
    if not path.exists():
        raise BadInput(why_nothing_serves(folder))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        with unix_address(path) as address:
            sock.connect(address)
    except ConnectionRefusedError:
        sock.close()
        holder = lock_holder(folder)
        if holder is not None:
            raise BadInput(
                f"{holder} holds {folder} but does not answer on its {SOCKET}; it may be "
                "stuck (its log: mptui.log in the folder)"
            ) from None
        raise BadInput(
            f"no live run in {folder}: {SOCKET} was left by a run that was killed (",
            resume(folder),
            " continues it)",
        ) from None
    except PermissionError:
        sock.close()
        raise BadInput(f"cannot attach to {folder}: its run belongs to another user") from None
    except OSError as error:
        sock.close()
        raise BadInput(f"cannot attach to {folder} ({error.strerror or error})") from None
    return sock


def why_nothing_serves(folder: Path) -> Message:
    """The real reason a session has no socket, from its files (torch-free, read-only): not a
    session; a live process that does not serve it (an app of its own); a run that stopped
    before its model loaded; or one that has ended, with what it reached."""
    if not (folder / SETTINGS).is_file():
        return Message.of(f"'{folder}' is not an mptui session (no settings.json)")
    holder = lock_holder(folder)
    if holder is not None:
        return Message.of(
            f"{holder} runs {folder} without serving it: it is an app of its own (only a "
            "headless run, mptui recover or ", setting("workers"), " can be attached), or its "
            "socket could not be made (its output said why)",
        )  # fmt: skip
    if not (folder / PLAN).is_file():
        return Message.of(
            f"nothing runs {folder}: its run stopped before the model loaded (", resume(folder),
            " starts it again)",
        )  # fmt: skip
    return Message.of(f"nothing runs {folder}: its run has ended", _what_it_reached(folder))


def _what_it_reached(folder: Path) -> Message:
    """``(done after 12 steps; recovery stopped at step 40 of 300)``-like words, from the
    session's summary and recovery log; empty when they say nothing readable."""
    parts = []
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        plan = json.loads((folder / PLAN).read_text())
        parts.append(f"{len(plan['steps'])} steps removed")
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        steps = [
            json.loads(line)["step"]
            for line in (folder / RECOVERY_LOG).read_text().splitlines()
            if line.strip()
        ]
        if steps:
            parts.append(f"recovered to step {max(steps)}")
    reached = f" ({', '.join(parts)})" if parts else ""
    return Message.of(reached, "; ", resume(folder), " opens it again")


def _connect_tcp(host: str, port: int) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except ConnectionRefusedError:
        raise BadInput(f"nothing listens on {host}:{port}") from None
    except OSError as error:
        raise BadInput(f"cannot reach {host}:{port} ({error.strerror or error})") from None


def _handshake(sock: socket.socket, target: str, token: str | None) -> RemoteEngine:
    sock.sendall(wire.encode_message("hello", {"protocol": wire.PROTOCOL, "token": token}))
    line = b""
    with contextlib.suppress(OSError):
        while not line.endswith(b"\n"):
            chunk = sock.recv(1)  # byte by byte: what follows the welcome is the reader's
            if not chunk:
                break
            line += chunk
    try:
        kind, body = wire.decode(line)
    except BadInput:
        raise BadInput(f"{target} did not answer as an mptui run") from None
    if kind == "refused":
        raise BadInput(f"{target} refused the connection: {body.get('reason', '?')}")
    if kind != "welcome" or body.get("protocol") != wire.PROTOCOL:
        raise BadInput(f"{target} speaks another version of the protocol; update mptui")
    sock.settimeout(None)
    return RemoteEngine(sock, Welcome.from_dict(body))


__all__ = ["RemoteEngine", "attach"]
