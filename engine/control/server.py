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
counted, and summed up in the log when the run ends). The server accepts connections itself, one
at a time, and closes one it refuses before it accepts the next: a flood of connections never
holds more of the process's files than those limits.

No client keeps a finished run alive by not reading: once the search is over, the server pings
every client each :data:`PING_S`; one that leaves a ping unanswered for :data:`ANSWER_S` is
dropped, and the run ends once no client is left (:class:`~.remote.RemoteEngine` answers).

Each attached client is numbered (``client 2``), and what it does to the run is told in one
line: it attached, paused, resumed or stopped the run, detached, was dropped, or was
disconnected when the run ended. The lines go to the session log and, when the server is given
``on_client``, to it (a headless run prints them on its output).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import itertools
import logging
import os
import secrets
import socket
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from ..errors import BadInput, setting
from ..output.eval_request import EvalRequest
from ..recovery.settings import RecoverySettings
from ..session.files import EXPORT, LOG, SOCKET, TOKEN
from . import events as ev
from . import wire
from .commands import Command, Pause, Resume, Stop
from .run_view import RunView
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
#: Connections the kernel may queue for the server to accept (they hold none of its files).
LISTEN_BACKLOG = 64
#: After the search: seconds between pings, and the longest a ping may stay unanswered before
#: its client counts as not reading (a stopped process, a client that never reads, a link gone
#: dead) and is dropped, so that the run it alone kept lingering ends.
PING_S = 3.0
ANSWER_S = 15.0
#: Seconds to wait before accepting again when the process is out of file descriptors.
ACCEPT_RETRY_S = 1.0
#: The commands whose sender the run's output names: those that change what the run is doing
#: for everyone watching it (the others steer within it, and their effects are events).
TOLD = {Pause: "paused the run", Resume: "resumed the run", Stop: "stopped the run"}

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
        raise BadInput(setting("listen"), f" wants HOST:PORT (e.g. 127.0.0.1:7077), not '{text}'")
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
    """One attached connection: its queue of lines, the task that writes them, and the pings it
    has not answered yet. ``label`` (``client 2``) tells it apart from the other clients of the
    run, which ``name`` (``a local client``, the refusals' word for it) does not."""

    def __init__(
        self, name: str, peer: str, writer: asyncio.StreamWriter, backlog: int, label: str
    ) -> None:
        self.name, self.peer, self.writer, self.backlog = name, peer, writer, backlog
        self.label = label
        self.pending: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.pings: deque[tuple[int, float]] = deque()  # (number, when sent), oldest first

    def ping(self, number: int, now: float) -> bool:
        """Queue ping ``number`` behind the lines before it: its answer proves they were read."""
        self.pings.append((number, now))
        return self.put(wire.encode_ping(number))

    def answered(self, number: int) -> None:
        """The client has read everything up to ping ``number``."""
        while self.pings and self.pings[0][0] <= number:
            self.pings.popleft()

    def silent_for(self, now: float) -> float:
        """Seconds its oldest unanswered ping has waited (0 when none waits)."""
        return now - self.pings[0][1] if self.pings else 0.0

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

    ``on_client``: given each line about a client (``client 2 paused the run``), on the
    server's thread: it must hand the line on and return, as the engine's subscribers do.
    """

    def __init__(
        self,
        engine: Served,
        session: Path,
        *,
        listen: tuple[str, int] | None = None,
        export_dir: Path | None = None,
        eval_request: EvalRequest | None = None,
        recovery: RecoverySettings | None = None,
        backlog: int = BACKLOG,
        linger: bool = False,
        on_client: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self._on_client = on_client
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
        self._recovery = recovery
        self._backlog = backlog
        self._snapshot = Snapshot(self.view)
        self._clients: set[_Client] = set()
        self._client_numbers = itertools.count(1)
        self._handshaking = 0  # connections accepted that have not said hello yet
        self._refusals = _Refusals()
        self._tasks: set[asyncio.Task] = set()
        self._listeners: list[socket.socket] = []
        self._ping_numbers = itertools.count(1)
        self._pinging: asyncio.Task | None = None
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
            self._ping_round()  # from now on a client that does not read is dropped
            self._end_if_unwatched()
        for client in list(self._clients):
            if not client.put(line):
                self._drop_behind(client)

    async def _open(self) -> None:
        try:
            sock = self._bind_private_unix_socket()
        except OSError as error:  # a file system without sockets: the run goes on unserved
            self.unix_error = f"cannot serve on {self.socket_path} ({error.strerror or error})"
            log.warning("%s", self.unix_error)
        else:
            self._accept_on(sock, tcp=False)
        if self.listen is not None:
            host, port = self.listen
            try:
                listeners = _tcp_listeners(host, port)
            except OSError as error:
                raise BadInput(
                    f"cannot listen on {host}:{port} ({error.strerror or error})"
                ) from None
            for sock in listeners:
                self._accept_on(sock, tcp=True)
            self.address = listeners[0].getsockname()[:2]
            self._write_token()
            log.info("listening on %s:%d (token in %s)", *self.address, self.token_path)
        self._pinging = asyncio.create_task(self._ping_forever())

    # --- accepting ------------------------------------------------------------------------------
    def _accept_on(self, sock: socket.socket, *, tcp: bool) -> None:
        """Accept on ``sock`` ourselves rather than through asyncio's server, which accepts a
        burst of up to a hundred connections before any of them is looked at: a flood would
        hold that many descriptors at once, where this holds one more than the limits."""
        sock.setblocking(False)
        self._listeners.append(sock)
        self._loop.add_reader(sock.fileno(), self._accept, sock, tcp)

    def _accept(self, listener: socket.socket, tcp: bool) -> None:
        """Take every connection waiting on ``listener``: refuse it and close it at once when
        the limits are reached, else count it as saying hello and serve it. At most a
        backlog's worth at a time, so that the clients already in get their turn."""
        for _ in range(LISTEN_BACKLOG):
            try:
                conn, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    continue  # a connection reset before it was taken, and the like
                # Out of descriptors: leave the rest queued in the kernel for a moment.
                self._refusals.note("local", "connections", "out of file descriptors", "delayed")
                self._loop.remove_reader(listener.fileno())
                self._loop.call_later(ACCEPT_RETRY_S, self._accept_again, listener, tcp)
                return
            name, peer = (f"{address[0]}:{address[1]}", address[0]) if tcp else LOCAL
            if self._handshaking >= MAX_HANDSHAKES or len(self._clients) >= MAX_CLIENTS:
                self._refusals.note(peer, name, "too many connections")
                _refuse_now(conn, "too many connections")
                continue
            self._handshaking += 1
            task = self._loop.create_task(self._begin(conn, name, peer, tcp))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _accept_again(self, listener: socket.socket, tcp: bool) -> None:
        if listener in self._listeners:  # not closed meanwhile
            self._loop.add_reader(listener.fileno(), self._accept, listener, tcp)
            self._accept(listener, tcp)

    async def _begin(self, conn: socket.socket, name: str, peer: str, tcp: bool) -> None:
        """Streams on an accepted connection, then :meth:`_serve` (which ends its hello)."""
        try:
            if tcp:
                streams = await asyncio.open_connection(sock=conn, limit=LINE_LIMIT)
            else:
                streams = await asyncio.open_unix_connection(sock=conn, limit=LINE_LIMIT)
        except (OSError, asyncio.CancelledError):
            self._handshaking -= 1
            conn.close()
            return
        await self._serve(*streams, name, peer, need_token=tcp)

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
            sock.listen(LISTEN_BACKLOG)
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

    async def _serve(self, reader, writer, name: str, peer: str, *, need_token: bool) -> None:
        """One connection, from its hello (counted in :attr:`_handshaking` since it was
        accepted) to its end. ``peer``: whom its refusals are logged under (the host, or
        ``local``)."""
        client: _Client | None = None
        left = "detached"  # it closed the connection, as the app does when it detaches
        try:
            try:
                hello = await self._hello(reader, writer, name, peer, need_token)
            finally:
                self._handshaking -= 1
            if hello is None:
                return
            if len(self._clients) >= MAX_CLIENTS:
                self._refuse(writer, peer, name, "too many clients attached")
                return
            label = f"client {next(self._client_numbers)}"
            client = _Client(name, peer, writer, self._backlog, label)
            writer.write(wire.encode_message("welcome", self._welcome().to_dict()))
            for line in self._snapshot.lines():  # with the live lines after it, in one go
                client.pending.append(line)
            client.backlog += len(client.pending)
            client.wake.set()
            self._clients.add(client)
            where = name if need_token else "unix socket"  # on TCP (the token), its address
            self._tell(f"{label} ({where}) attached")
            writing = asyncio.create_task(client.write_forever())
            try:
                problem = await self._read_commands(reader, client)
            finally:
                writing.cancel()
            if problem is not None and client in self._clients:  # not dropped already
                self._refusals.note(peer, name, f"it sent {problem}", "dropped")
                self._drop(client, f"it sent {problem}")
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a detach too: an app that closes with events unread resets the connection
        except asyncio.CancelledError:
            # The server is closing; ending quietly keeps asyncio (3.11) from printing it.
            left = "disconnected: the run has ended"
        finally:
            if client is not None and client in self._clients:  # not dropped
                self._clients.discard(client)
                self._tell(f"{client.label} {left}")
                self._end_if_unwatched()
            writer.close()

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
            eval_request=self._eval_request, recovery=self._recovery,
        )  # fmt: skip

    async def _read_commands(self, reader: asyncio.StreamReader, client: _Client) -> str | None:
        """Hand each command to the engine, and note each answer to a ping, until the client
        leaves (None), or until it sends a line that is neither (what was wrong with it): that
        ends the connection."""
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # asyncio's word for a line over the limit
                return f"a line over {LINE_LIMIT // 1024} KiB"
            if not line:
                return None
            try:
                kind, value = wire.decode(line)
            except BadInput as error:
                return f"a bad line ({' '.join(str(error).split())[:120]})"
            if kind == "pong":
                number = wire.ping_number(value)
                if number is None:
                    return "a pong line without its ping's number"
                client.answered(number)
            elif kind == "command":
                self.engine.send(value)
                if type(value) in TOLD:
                    self._tell(f"{client.label} {TOLD[type(value)]}")
            else:
                return f"a {kind[:40]} line, not a command"

    def _drop_behind(self, client: _Client) -> None:
        why = f"it fell {len(client.pending)} events behind (not reading?)"
        log.warning("dropped %s: %s", client.name, why)
        self._drop(client, why)

    def _drop(self, client: _Client, why: str) -> None:
        """End ``client``'s connection unread, for ``why`` (which the caller has logged)."""
        self._clients.discard(client)
        client.pending.clear()
        client.writer.transport.abort()
        self._tell(f"{client.label} was dropped: {why}", logged=True)
        self._end_if_unwatched()

    def _tell(self, line: str, *, logged: bool = False) -> None:
        """A line about a client (``client 2 paused the run``), for the session log (unless
        ``logged``: the caller has logged it as a warning) and ``on_client``."""
        if not logged:
            log.info("%s", line)
        if self._on_client is not None:
            self._on_client(line)

    def _may_end(self) -> bool:
        """A lingering engine may end once its search is over and what a client started (an
        export, an evaluation, a recovery) is done."""
        return self.linger and self.view.search_over and not self.view.busy

    def _end_if_unwatched(self) -> None:
        """... and no client is left to use it."""
        if self._may_end() and not self._clients:
            self.engine.send(Stop())

    async def _ping_forever(self) -> None:
        while True:
            await asyncio.sleep(PING_S)
            self._ping_round()

    def _ping_round(self) -> None:
        """While the run lingers only for its clients: drop each client that has left a ping
        unanswered for :data:`ANSWER_S` (it is not reading, and would keep the run forever),
        and ping the others. During the search nothing is asked of a client: one that stops
        reading is dropped by its backlog, and the run ends by itself."""
        if not self._may_end():
            return
        now = time.monotonic()
        for client in list(self._clients):
            if client.silent_for(now) > ANSWER_S:
                what = f"it left a ping unanswered for {ANSWER_S:g} s after the search"
                why = f"{what} (not reading?)"
                self._refusals.note(client.peer, client.name, why, "dropped")
                self._drop(client, why)
            elif not client.ping(next(self._ping_numbers), now):
                self._drop_behind(client)

    async def _shutdown(self) -> None:
        for sock in self._listeners:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
        pinging = [self._pinging] if self._pinging is not None else []
        for task in pinging:
            task.cancel()
        clients = list(self._clients)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(c.flush() for c in clients), return_exceptions=True), FLUSH_S
            )
        for client in clients:
            if client.pending or client.writer.transport.get_write_buffer_size():
                client.writer.transport.abort()  # not taking its last lines: never wait on it
            else:
                client.writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *pinging, return_exceptions=True)

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
        """Refusals, dropped clients and each client's lines (:meth:`_tell`) go to the
        session's log."""
        handler = logging.FileHandler(self.session / LOG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        self._log_handler = handler


#: How a connection on engine.sock is named in the log, and whom its refusals count for.
LOCAL = ("a local client", "local")


def _refuse_now(conn: socket.socket, reason: str) -> None:
    """Say why (if the line fits at once) and close: a refused connection holds nothing."""
    with contextlib.suppress(OSError):
        conn.setblocking(False)
        conn.send(wire.encode_message("refused", {"reason": reason}))
    conn.close()


def _tcp_listeners(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to (as asyncio's server binds):
    ``localhost`` is IPv6 and IPv4. Port 0 picks one port, the first address's, for all."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(listeners) > 1:
                address = (address[0], listeners[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
    except OSError:
        for sock in listeners:
            sock.close()
        raise
    return listeners


__all__ = ["BACKLOG", "EngineServer", "Served", "parse_listen", "unix_address"]
