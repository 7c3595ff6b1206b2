"""A running engine served on a socket, so ``mptui attach`` can watch and steer it.

The server wraps anything engine-like (:class:`Served`: the one-process :class:`Engine`, or
rank 0 of a distributed run). It listens on ``engine.sock`` in the session folder (owner only,
mode 0600) and, only when asked, on TCP behind a token. Every client gets the events and may
send commands; one that attaches mid-run first gets a :class:`Snapshot` of what the app needs
to rebuild the picture, then the live events.

The engine thread never waits on a client: its subscriber only hands the event to the server's
own thread (an asyncio loop), which encodes it and queues it per client. A client whose queue
passes ``backlog`` lines (it stopped reading) is dropped, and the session log says so.

A hostile or broken client costs the server's thread little and the engine nothing: a line
longer than :data:`LINE_LIMIT` or one that is not a command closes its connection, at most
:data:`MAX_HANDSHAKES` connections may be saying hello (for :data:`HANDSHAKE_S` at most) and
:data:`MAX_CLIENTS` be attached, and each kind of refusal is logged once per peer (repeats are
counted, and summed up in the log when the run ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import socket
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from . import events as ev
from . import wire
from .commands import Command, Stop
from .errors import BadInput
from .eval_request import EvalRequest
from .run_view import RunView
from .session_files import EXPORT, LOG, SOCKET, TOKEN
from .snapshot import Snapshot
from .wire import Welcome

#: Lines queued for one client before it counts as stuck and is dropped.
BACKLOG = 10_000
#: Seconds a client has to say hello, and to take its last lines when the run ends.
HANDSHAKE_S = 5.0
FLUSH_S = 2.0
#: The longest line a client may send (a command is a few hundred bytes).
LINE_LIMIT = 1 << 16
#: Connections that may be saying hello at once, and clients attached at once; more are
#: refused unread, so a flood of connections never grows the server's work.
MAX_HANDSHAKES = 16
MAX_CLIENTS = 16

log = logging.getLogger("mptui.serve")


class Served(Protocol):
    """What the server needs of an engine; :class:`~.runner.Engine` is one."""

    def subscribe(self, subscriber: Callable[[ev.Event], None]) -> None: ...
    def send(self, command: Command) -> None: ...


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a pair; one clear line when it is not one."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise BadInput(f"--listen wants HOST:PORT (e.g. 127.0.0.1:7077), not '{text}'")
    return host, int(port)


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """``path`` as ``bind`` and ``connect`` take it. An AF_UNIX address ends at 107 bytes, and
    a session folder can be deeper than that: then its folder is reached through a descriptor
    in /proc (Linux), for as long as the block runs."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


class _Client:
    """One attached connection: its queue of lines and the task that writes them."""

    def __init__(self, name: str, writer: asyncio.StreamWriter, backlog: int) -> None:
        self.name, self.writer, self.backlog = name, writer, backlog
        self.pending: deque[bytes] = deque()
        self.wake = asyncio.Event()

    def put(self, line: bytes) -> bool:
        """Queue ``line``; False when the client has fallen too far behind."""
        self.pending.append(line)
        self.wake.set()
        return len(self.pending) <= self.backlog

    async def write_forever(self) -> None:
        with contextlib.suppress(ConnectionError):  # gone: its reader ends the connection
            while True:
                await self.wake.wait()
                self.wake.clear()
                await self.flush()

    async def flush(self) -> None:
        while self.pending:
            lines = list(self.pending)
            self.pending.clear()
            self.writer.writelines(lines)
            await self.writer.drain()


class _Refusals:
    """Each kind of refusal (or drop) logged once per peer; the repeats are counted, so a client
    retrying in a loop cannot fill the session log, and summed up by :meth:`log_repeats`."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()

    def note(self, peer: str, name: str, what: str, done: str = "refused") -> None:
        """``name`` (a connection of ``peer``) was ``done`` (refused, dropped) for ``what``."""
        key = (peer, what)
        self._counts[key] += 1
        if self._counts[key] == 1:
            log.warning("%s %s: %s", done, name, what)

    def log_repeats(self) -> None:
        for (peer, what), count in self._counts.items():
            if count > 1:
                log.warning("%d more connections (%s) ended so: %s", count - 1, peer, what)


class EngineServer:
    """Serves ``engine`` on ``SESSION/engine.sock`` (and on TCP with a token when ``listen``).

    ``start()`` before the engine emits what clients should see; ``close()`` after the run (the
    clients get their last lines, then the socket and the token file are removed).

    ``linger``: the engine lingers after its search, answering exports and evaluations until a
    Stop. The server keeps it so while a client is attached (the user looks at the result, as
    in the one-process app) and sends the Stop once none is, so an unwatched run still ends.
    """

    def __init__(
        self,
        engine: Served,
        session: Path,
        *,
        listen: tuple[str, int] | None = None,
        export_dir: Path | None = None,
        eval_request: EvalRequest | None = None,
        backlog: int = BACKLOG,
        linger: bool = False,
    ) -> None:
        self.engine = engine
        self.linger = linger
        self.view = RunView()  # the run as the events tell it, for the snapshot and the end
        self.session = Path(session)
        self.socket_path = self.session / SOCKET
        self.token_path = self.session / TOKEN
        self.listen = listen
        self.token = secrets.token_urlsafe(24) if listen else None
        self.address: tuple[str, int] | None = None  # where TCP listens (the port resolved)
        self.unix_error: str | None = None  # why engine.sock could not be made, if it could not
        self._export_dir = export_dir or self.session / EXPORT
        self._eval_request = eval_request
        self._backlog = backlog
        self._snapshot = Snapshot(self.view)
        self._clients: set[_Client] = set()
        self._handshaking = 0  # connections that have not said hello yet
        self._refusals = _Refusals()
        self._tasks: set[asyncio.Task] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mptui-serve", daemon=True
        )
        self._log_handler: logging.Handler | None = None
        self._socket_inode: int | None = None

    # --- caller side ----------------------------------------------------------------------------
    def start(self) -> None:
        """Listen, and subscribe to the engine. Raises BadInput when TCP cannot listen; a
        session folder that cannot hold a socket is only noted (:attr:`unix_error`)."""
        self._log_to_session()
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(timeout=30)
        except BadInput:
            self.close()
            raise
        self.engine.subscribe(self._on_event)

    def close(self) -> None:
        """Give every client its last lines (a moment at most), then close and clean up."""
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
                future.result(timeout=FLUSH_S + 3)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._loop.close()
        self._refusals.log_repeats()
        self._remove_files()
        if self._log_handler is not None:
            log.removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    # --- engine thread --------------------------------------------------------------------------
    def _on_event(self, event: ev.Event) -> None:
        """On the engine thread: hand over and return at once."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone
            self._loop.call_soon_threadsafe(self._publish, event)

    # --- server thread --------------------------------------------------------------------------
    def _publish(self, event: ev.Event) -> None:
        line = wire.encode_event(event)
        could_end = self._may_end()
        self.view.apply(event)
        self._snapshot.record(event, line)
        if self._may_end() and not could_end:
            self._end_if_unwatched()
        for client in list(self._clients):
            if not client.put(line):
                log.warning(
                    "dropped %s: it fell %d events behind (not reading?)",
                    client.name, len(client.pending),
                )  # fmt: skip
                self._drop(client)

    async def _open(self) -> None:
        try:
            sock = self._bind_private_unix_socket()
        except OSError as error:  # a file system without sockets: the run goes on unserved
            self.unix_error = f"cannot serve on {self.socket_path} ({error.strerror or error})"
            log.warning("%s", self.unix_error)
        else:
            self._servers.append(
                await asyncio.start_unix_server(self._serve_unix, sock=sock, limit=LINE_LIMIT)
            )
        if self.listen is not None:
            host, port = self.listen
            try:
                server = await asyncio.start_server(self._serve_tcp, host, port, limit=LINE_LIMIT)
            except OSError as error:
                raise BadInput(
                    f"cannot listen on {host}:{port} ({error.strerror or error})"
                ) from None
            self._servers.append(server)
            self.address = server.sockets[0].getsockname()[:2]
            self._write_token()
            log.info("listening on %s:%d (token in %s)", *self.address, self.token_path)

    def _bind_private_unix_socket(self) -> socket.socket:
        """Bind in a fresh 0700 folder, make it 0600, then rename it into the session: no moment
        exists where anyone but the owner could connect. A socket left by a killed run (this
        process holds the session lock, so any there is stale) is replaced by the rename."""
        private = Path(tempfile.mkdtemp(prefix=".sock-", dir=self.session))
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with unix_address(private / SOCKET) as address:
                sock.bind(address)
            os.chmod(private / SOCKET, 0o600)
            os.rename(private / SOCKET, self.socket_path)
            self._socket_inode = self.socket_path.stat().st_ino
            sock.listen(16)
        finally:
            with contextlib.suppress(OSError):
                private.rmdir()
        return sock

    def _write_token(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.token_path.unlink()
        descriptor = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{self.token}\n")

    async def _serve_unix(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await self._serve(reader, writer, "a local client", "local", need_token=False)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        host, port = writer.get_extra_info("peername")[:2]
        await self._serve(reader, writer, f"{host}:{port}", host, need_token=True)

    async def _serve(self, reader, writer, name: str, peer: str, *, need_token: bool) -> None:
        """One connection, from its hello to its end. ``peer``: whom its refusals are logged
        under (the host, or ``local``)."""
        if self._handshaking >= MAX_HANDSHAKES or len(self._clients) >= MAX_CLIENTS:
            self._refuse(writer, peer, name, "too many connections")
            writer.close()
            return
        task = asyncio.current_task()
        self._tasks.add(task)
        client: _Client | None = None
        try:
            self._handshaking += 1
            try:
                hello = await self._hello(reader, writer, name, peer, need_token)
            finally:
                self._handshaking -= 1
            if hello is None:
                return
            if len(self._clients) >= MAX_CLIENTS:
                self._refuse(writer, peer, name, "too many clients attached")
                return
            client = _Client(name, writer, self._backlog)
            writer.write(wire.encode_message("welcome", self._welcome().to_dict()))
            for line in self._snapshot.lines():  # with the live lines after it, in one go
                client.pending.append(line)
            client.backlog += len(client.pending)
            client.wake.set()
            self._clients.add(client)
            log.info("%s attached", name)
            writing = asyncio.create_task(client.write_forever())
            try:
                problem = await self._read_commands(reader, client)
            finally:
                writing.cancel()
            if problem is not None:
                self._refusals.note(peer, name, f"it sent {problem}", "dropped")
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # the server is closing; ending quietly keeps asyncio (3.11) from printing it
        finally:
            if client is not None and client in self._clients:
                self._clients.discard(client)
                log.info("%s detached", name)
                self._end_if_unwatched()
            writer.close()
            self._tasks.discard(task)

    async def _hello(self, reader, writer, name: str, peer: str, need_token: bool) -> dict | None:
        """The client's first line; None (and the client told why) when it is refused."""
        try:
            line = await asyncio.wait_for(reader.readline(), HANDSHAKE_S)
            kind, body = wire.decode(line)
        except (TimeoutError, BadInput, ValueError):  # silent, garbage, or a line over the limit
            kind, body = "", None
        problem = None
        if kind != "hello" or not isinstance(body, dict):
            problem = "not an mptui client"
        elif body.get("protocol") != wire.PROTOCOL:
            problem = f"protocol {body.get('protocol')} (this run speaks {wire.PROTOCOL})"
        elif need_token and not hmac.compare_digest(str(body.get("token")), self.token or ""):
            problem = "wrong token"
        if problem is None:
            return body
        self._refuse(writer, peer, name, problem)
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(writer.drain(), HANDSHAKE_S)  # a client that never reads
        return None

    def _refuse(self, writer, peer: str, name: str, problem: str) -> None:
        """Tell the client why (if it reads), and log it once per peer and kind."""
        self._refusals.note(peer, name, problem)
        writer.write(wire.encode_message("refused", {"reason": problem}))

    def _welcome(self) -> Welcome:
        return Welcome(
            pid=os.getpid(), host=socket.gethostname(), session=str(self.session),
            guided=self.view.guided, export_dir=str(self._export_dir),
            eval_request=self._eval_request,
        )  # fmt: skip

    async def _read_commands(self, reader: asyncio.StreamReader, client: _Client) -> str | None:
        """Hand each command to the engine until the client leaves (None), or until it sends
        a line that is not a command (what was wrong with it): that ends the connection."""
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # asyncio's word for a line over the limit
                return f"a line over {LINE_LIMIT // 1024} KiB"
            if not line:
                return None
            try:
                kind, command = wire.decode(line)
            except BadInput as error:
                return f"a bad line ({' '.join(str(error).split())[:120]})"
            if kind != "command":
                return f"a {kind[:40]} line, not a command"
            self.engine.send(command)

    def _drop(self, client: _Client) -> None:
        self._clients.discard(client)
        client.pending.clear()
        client.writer.transport.abort()
        self._end_if_unwatched()

    def _may_end(self) -> bool:
        """A lingering engine may end once its search is over and what a client started (an
        export, an evaluation, a recovery) is done."""
        return self.linger and self.view.search_over and not self.view.busy

    def _end_if_unwatched(self) -> None:
        """... and no client is left to use it."""
        if self._may_end() and not self._clients:
            self.engine.send(Stop())

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        clients = list(self._clients)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(c.flush() for c in clients), return_exceptions=True), FLUSH_S
            )
        for client in clients:
            client.writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- files ----------------------------------------------------------------------------------
    def _remove_files(self) -> None:
        """The socket (if it is still ours) and the token go with the run."""
        with contextlib.suppress(OSError):
            if self._socket_inode == self.socket_path.stat().st_ino:
                self.socket_path.unlink()
        if self.token is not None:
            with contextlib.suppress(OSError):
                self.token_path.unlink()

    def _log_to_session(self) -> None:
        """Attaches, detaches, refusals and dropped clients go to the session's log."""
        handler = logging.FileHandler(self.session / LOG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        self._log_handler = handler


__all__ = ["BACKLOG", "EngineServer", "Served", "parse_listen", "unix_address"]
