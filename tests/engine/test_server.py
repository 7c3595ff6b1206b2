"""The engine server on its real sockets, in this process: what a client attaching mid-run
sees, clients that stop reading, the socket's mode, a stale socket, and the TCP token."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import stat
import threading
import time

import pytest
from app_replay import Publisher, fixed_run_events

from mptui.app.state import RunState
from mptui.engine.api import BadInput, EngineServer, EngineState, RunView, attach, wire
from mptui.engine.api import commands as cmd
from mptui.engine.api import events as ev
from mptui.engine.api import recovery_events as rev
from mptui.engine.control.snapshot import Snapshot
from mptui.engine.session import files as session_files
from mptui.engine.session.folder import SessionFolder


def steered_run_events() -> list[ev.Event]:
    """The fixed short run, then what steering adds: a proposal, a pause, an undo, a restart,
    guided mode; after the search a recovery, paused and resumed; then the engine's end."""
    events = fixed_run_events()
    events += [
        ev.GuidedChanged(True),
        ev.Proposal(4, "L1.mlp-46", 46.0),
        ev.StateChanged("waiting"),
        ev.StateChanged("paused"),
        ev.Notice("paused"),
        ev.StepUndone(3, "L2.mlp-46", 44.8, 0.125),
        ev.StateChanged("running"),
        ev.StepStarted(3, "mlp_channels", ("L0.mlp-46", "L1.mlp-46"), 44.8),
        ev.CandidateScored(3, "mlp_channels", "L0.mlp-46", 45.0, 0.2, 23_552, 1, 2),
        ev.Progress(3, 1, 2, 900.0, 1.0),
        ev.Activity(ev.ActivityKind.EXPORT, "exporting to /tmp/x", 5, 10),
        ev.Activity(None),
        ev.MemorySample(rss_bytes=2**30),
        ev.DimensionChanged(None, None, ("blocks", "mlp_channels", "attn_heads")),
        ev.StateChanged("done"),
        ev.Finished("done", {}),
        ev.StateChanged(EngineState.RECOVERING),
        rev.RecoveryStarted(0, 40, 1024, 3_000_000, 64, 4, {"steps": 40}),
        rev.RecoveryValidated(0, 52.0),
        rev.RecoveryStep(1, 40, 3.9, 1e-4, 900.0, 39.0, 2, 1),
        ev.StateChanged(EngineState.RECOVERY_PAUSED),
        ev.Activity(ev.ActivityKind.EVALUATION, "evaluating the recovered model", 1, 4),
        ev.Activity(None),
        ev.StateChanged(EngineState.RECOVERING),
        rev.RecoveryStep(2, 40, 3.7, 2e-4, 910.0, 38.0, 2, 1),
        rev.RecoveryFinished("done", 2, 40),
        ev.StateChanged(EngineState.DONE),
        ev.StateChanged(EngineState.ENDED),
    ]
    return events


def shown(state: RunState) -> dict:
    """What the screen is drawn from (the notices history aside: a client gets the latest)."""
    fields = dataclasses.asdict(state)
    fields.pop("candidates_step")  # bookkeeping: which step the table belongs to
    fields["memory"] = list(state.memory)
    return fields


def test_a_client_attaching_at_any_moment_rebuilds_what_the_screen_shows():
    events = steered_run_events()
    view, live = RunView(), RunState()
    snapshot = Snapshot(view)
    for count, event in enumerate(events, start=1):
        view.apply(event)
        snapshot.record(event, wire.encode_event(event))
        live.apply(event)
        rebuilt = RunState()
        for line in snapshot.lines():
            rebuilt.apply(wire.decode(line)[1])
        assert shown(rebuilt) == shown(live), f"after {count} events ({type(event).__name__})"


def raw_client(path, hello: dict | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    sock.sendall(wire.encode_message("hello", hello or {"protocol": wire.PROTOCOL}))
    return sock


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def settled(server: EngineServer) -> None:
    """Everything handed to the server's thread so far has been handled there: its loop runs
    callbacks in order, so one queued now runs after them."""
    done = threading.Event()
    server._loop.call_soon_threadsafe(done.set)
    assert done.wait(10)


def test_a_client_that_stops_reading_is_dropped_and_never_blocks_the_engine(tmp_path):
    """No timing: the engine's emits complete while the server's thread is frozen."""
    engine = Publisher()
    server = EngineServer(engine, tmp_path, backlog=1000)
    server.start()
    try:
        stuck = raw_client(server.socket_path)  # says hello, then never reads
        reader = attach(str(tmp_path))
        seen: list[ev.Event] = []
        reader.subscribe(seen.append)
        reader.start()
        wait_until(lambda: len(server._clients) == 2)
        message = lambda k: ev.Notice("x" * 200 + str(k))  # noqa: E731

        # The server's thread frozen (as if every client had stalled it): the engine's emits
        # still all return, since they only hand the event over. Fewer than the backlog, so
        # the reading client is not dropped when the server catches up.
        frozen, thawed = threading.Event(), threading.Event()
        server._loop.call_soon_threadsafe(lambda: (frozen.set(), thawed.wait()))
        assert frozen.wait(5)
        first = 500
        emitting = threading.Thread(target=lambda: [engine.emit(message(k)) for k in range(first)])
        emitting.start()
        emitting.join(timeout=60)
        assert not emitting.is_alive() and not thawed.is_set()  # done while the server was frozen
        thawed.set()

        total = 4000
        for k in range(first, total):  # bursts a reading client keeps up with: never more
            engine.emit(message(k))  # than 500 events ahead of it, half the backlog
            if k % 100 == 0:
                wait_until(lambda k=k: len(seen) >= k - 400, timeout=30)
        notices = lambda: [e.message for e in seen if isinstance(e, ev.Notice)]  # noqa: E731
        wait_until(lambda: len(notices()) == total, timeout=30)
        assert notices() == ["x" * 200 + str(k) for k in range(total)]
        log = (tmp_path / session_files.LOG).read_text()
        # the backlog, one more, and the snapshot it was sent first (guided mode, the state)
        assert log.count("dropped a local client: it fell 1003 events behind") == 1
        reader.send(cmd.Pause())
        assert engine.got_command.wait(5) and engine.received == [cmd.Pause()]
        reader.close()
        stuck.close()
    finally:
        server.close()
    assert not (tmp_path / session_files.SOCKET).exists()


def test_the_socket_is_the_owners_only_and_a_stale_one_is_replaced(tmp_path):
    (tmp_path / session_files.SETTINGS).write_text("{}")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / session_files.SOCKET))  # what a killed run leaves: nobody listens
    stale.close()
    with pytest.raises(BadInput, match="was left by a run that was killed"):
        attach(str(tmp_path))
    engine = Publisher()
    server = EngineServer(engine, tmp_path)
    server.start()
    try:
        mode = (tmp_path / session_files.SOCKET).stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert not list(tmp_path.glob(".sock-*"))  # the private folder it was made in is gone
        remote = attach(str(tmp_path))
        assert remote.peer.startswith("process ")
        remote.close()
    finally:
        server.close()
    assert not (tmp_path / session_files.SOCKET).exists()
    with pytest.raises(BadInput, match="its run stopped before the model loaded"):
        attach(str(tmp_path))


def test_attaching_where_nothing_serves_says_the_real_reason(tmp_path):
    """No socket, or one nobody answers on: which of the real cases it is, from the folder."""
    folder = tmp_path / "session"
    folder.mkdir()

    def refusal() -> str:
        with pytest.raises(BadInput) as raised:
            attach(str(folder))
        return str(raised.value)

    assert refusal() == f"'{folder}' is not an mptui session (no settings.json)"
    (folder / session_files.SETTINGS).write_text("{}")
    assert refusal() == (
        f"nothing runs {folder}: its run stopped before the model loaded "
        f"(a resume of {folder} starts it again)"
    )
    plan = {"steps": [{}, {}, {}]}
    (folder / session_files.PLAN).write_text(json.dumps(plan))
    (folder / session_files.RECOVERY_LOG).write_text(
        "".join(json.dumps({"step": step, "loss": 1.0}) + "\n" for step in (1, 2, 3, 4))
    )
    assert refusal() == (
        f"nothing runs {folder}: its run has ended (3 steps removed, recovered to step 4); "
        f"a resume of {folder} opens it again"
    )
    owner = SessionFolder(folder)
    owner.lock()  # an app of its own holds the session and serves nothing
    try:
        assert refusal().startswith(f"process {os.getpid()} runs {folder} without serving it")
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(folder / session_files.SOCKET))  # bound, never listening
        try:
            assert refusal().startswith(f"process {os.getpid()} holds {folder} but does not answer")
        finally:
            stale.close()
    finally:
        owner.unlock()


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        (b'{"hello": {"protocol": 99}}\n', "protocol 99 (this run speaks 1)"),
        (b"GET / HTTP/1.1\r\n", "not an mptui client"),
    ],
)
def test_a_client_that_does_not_speak_the_protocol_is_refused(tmp_path, hello, reason):
    server = EngineServer(Publisher(), tmp_path)
    server.start()
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(server.socket_path))
        sock.sendall(hello)
        answer = sock.makefile("rb").readline()
        assert wire.decode(answer) == ("refused", {"reason": reason})
        sock.close()
    finally:
        server.close()
    assert f"refused a local client: {reason}" in (tmp_path / session_files.LOG).read_text()


def test_a_session_deeper_than_a_unix_address_is_served(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    server = EngineServer(Publisher(), deep)
    server.start()
    try:
        assert len(str(deep / session_files.SOCKET)) > 108
        remote = attach(str(deep))
        assert remote.welcome.session == str(deep)
        remote.close()
    finally:
        server.close()


def test_tcp_wants_the_token_and_logs_a_wrong_one(tmp_path):
    engine = Publisher()
    server = EngineServer(engine, tmp_path, listen=("127.0.0.1", 0))
    server.start()
    try:
        host, port = server.address
        assert stat.S_IMODE((tmp_path / session_files.TOKEN).stat().st_mode) == 0o600
        assert (tmp_path / session_files.TOKEN).read_text().strip() == server.token
        with pytest.raises(BadInput, match="refused the connection: wrong token"):
            attach(f"{host}:{port}", "not-the-token")
        assert "refused 127.0.0.1:" in (tmp_path / session_files.LOG).read_text()
        remote = attach(f"{host}:{port}", server.token)
        remote.start()
        remote.send(cmd.Stop())
        assert engine.got_command.wait(5) and engine.received == [cmd.Stop()]
        remote.close()
    finally:
        server.close()
    assert not (tmp_path / session_files.TOKEN).exists()


def test_a_lingering_run_ends_once_no_client_is_left_and_nothing_is_under_way(tmp_path):
    """linger: after the search the run stays while a client is attached and until what it
    started is done; a search that ends unwatched ends at once."""
    engine = Publisher()
    server = EngineServer(engine, tmp_path, linger=True)
    server.start()
    try:
        client = attach(str(tmp_path))
        client.start()
        wait_until(lambda: len(server._clients) == 1)
        engine.emit(ev.Finished("done", {}))
        engine.emit(ev.Activity(ev.ActivityKind.EXPORT, "exporting to /tmp/x"))
        settled(server)
        assert engine.received == []  # watched
        client.close()
        wait_until(lambda: not server._clients)
        settled(server)
        assert engine.received == []  # the export goes on
        engine.emit(ev.Activity(None))
        assert engine.got_command.wait(5) and engine.received == [cmd.Stop()]
    finally:
        server.close()

    unwatched = Publisher()
    (tmp_path / "unwatched").mkdir()
    server = EngineServer(unwatched, tmp_path / "unwatched", linger=True)
    server.start()
    try:
        unwatched.emit(ev.Finished("done", {}))
        assert unwatched.got_command.wait(5) and unwatched.received == [cmd.Stop()]
    finally:
        server.close()
