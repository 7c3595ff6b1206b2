"""The server's side of issue 29, in this process on its real sockets: after the search a client
is asked whether it reads (a ping it must answer), and one that does not, its socket buffer
full, is dropped without the server ever waiting on it, while a reading client keeps the run;
a TCP connection past the limits is refused at once; a pong is the only line besides a command
that an attached client may send."""

from __future__ import annotations

import asyncio
import socket

import pytest
from app_replay import Publisher
from test_server import raw_client, wait_until

from mptui.engine.api import EngineServer, attach, wire
from mptui.engine.api import commands as cmd
from mptui.engine.api import events as ev
from mptui.engine.control import server as served
from mptui.engine.session import files as session_files


def on_server(server: EngineServer, read):
    """``read()`` on the server's own thread (where its state changes), and its value."""

    async def call():
        return read()

    return asyncio.run_coroutine_threadsafe(call(), server._loop).result(timeout=30)


def test_ping_and_pong_are_session_lines():
    assert wire.decode(wire.encode_ping(7)) == ("ping", {"n": 7})
    assert wire.decode(wire.encode_pong(7)) == ("pong", {"n": 7})
    assert wire.ping_number({"n": 7}) == 7
    for body in [{}, {"n": "7"}, {"n": True}, {"n": 1.5}, [7], None]:
        assert wire.ping_number(body) is None


def test_after_the_search_a_client_that_never_reads_is_dropped_and_a_reader_keeps_the_run(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(served, "PING_S", 0.05)  # so that the test takes a moment, not 20 s
    monkeypatch.setattr(served, "ANSWER_S", 0.5)
    engine = Publisher()
    server = EngineServer(engine, tmp_path, linger=True)
    server.start()
    try:
        reader = attach(str(tmp_path))
        seen: list[ev.Event] = []
        reader.subscribe(seen.append)
        reader.start()
        stuck = raw_client(server.socket_path)  # says hello, then never reads
        wait_until(lambda: len(server._clients) == 2)

        # Far more than a socket buffer holds, far fewer lines than the backlog: the stuck
        # client stays attached, its lines piling up in the server's transport.
        big = [ev.Notice(f"{k} " + "x" * 8192) for k in range(400)]
        for event in big:
            engine.emit(event)
        wait_until(lambda: sum(isinstance(e, ev.Notice) for e in seen) == len(big), timeout=60)
        buffered = on_server(
            server,
            lambda: sorted(c.writer.transport.get_write_buffer_size() for c in server._clients),
        )
        assert buffered[0] == 0 and buffered[1] > 0, (
            buffered
        )  # the reader's empty, the other's full

        engine.emit(ev.Finished("done", {}))  # the search is over: only clients keep the run
        log = tmp_path / session_files.LOG
        dropped = "dropped a local client: it left a ping unanswered for 0.5 s after the search"
        wait_until(lambda: dropped in log.read_text(), timeout=60)
        assert on_server(server, lambda: len(server._clients)) == 1  # the reader answered
        assert engine.received == []  # and the run stays for it
        assert reader.finished is not None and reader.finished.reason == "done"

        reader.close()  # the last reader leaves: the run is told to end
        assert engine.got_command.wait(30) and engine.received == [cmd.Stop()]
        stuck.close()
    finally:
        server.close()  # never waits on the stuck client
    assert not (tmp_path / session_files.SOCKET).exists()
    assert log.read_text().count(dropped) == 1


def test_an_attached_client_may_answer_pings_but_not_send_a_bad_pong(tmp_path):
    engine = Publisher()
    server = EngineServer(engine, tmp_path)
    server.start()
    try:
        client = raw_client(server.socket_path)
        wait_until(lambda: len(server._clients) == 1)
        client.sendall(wire.encode_pong(1))  # an answer to nothing asked: harmless
        client.sendall(wire.encode_command(cmd.Pause()))
        assert engine.got_command.wait(10) and engine.received == [cmd.Pause()]
        assert len(server._clients) == 1
        client.sendall(b'{"pong": {"n": "one"}}\n')
        wait_until(lambda: not server._clients)
        client.close()
    finally:
        server.close()
    log = (tmp_path / session_files.LOG).read_text()
    assert "dropped a local client: it sent a pong line without its ping's number" in log


def test_over_tcp_each_connection_past_the_limits_is_refused_at_once(tmp_path, monkeypatch):
    """The open files a flood costs are measured on a run of its own (in another process:
    tests/end_to_end/test_client_resources.py); here, that each refused connection is told
    why and closed while the first ones still hold their places."""
    monkeypatch.setattr(served, "HANDSHAKE_S", 60.0)  # the silent ones hold on, however slow
    server = EngineServer(Publisher(), tmp_path, listen=("127.0.0.1", 0))
    server.start()
    flood: list[socket.socket] = []
    try:
        host, port = server.address
        for _ in range(200):  # kept open
            flood.append(socket.create_connection((host, port)))
        for sock in flood[served.MAX_HANDSHAKES :]:
            kind, body = wire.decode(sock.makefile("rb").readline())
            assert (kind, body) == ("refused", {"reason": "too many connections"})
            assert sock.recv(1) == b""
        assert server._handshaking == served.MAX_HANDSHAKES
        for sock in flood[: served.MAX_HANDSHAKES]:  # the silent ones leave: room again
            sock.close()
        wait_until(lambda: server._handshaking == 0)
        attach(f"{host}:{port}", server.token).close()
    finally:
        for sock in flood:
            sock.close()
        server.close()
    log = (tmp_path / session_files.LOG).read_text()
    assert log.count(": too many connections") == 2, log  # the first, then the sum
    refused = 200 - served.MAX_HANDSHAKES
    assert f"{refused - 1} more connections (127.0.0.1) ended so: too many connections" in log


def ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_tcp_listens_on_every_address_of_its_host(tmp_path, host):
    if ":" in host and not ipv6():
        pytest.skip("no IPv6 here")
    server = EngineServer(Publisher(), tmp_path, listen=(host, 0))
    server.start()
    try:
        port = server.address[1]
        families = {info[0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
        for family in families:
            address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0][4]
            remote = attach(f"[{address[0]}]:{port}", server.token)
            remote.close()
    finally:
        server.close()
