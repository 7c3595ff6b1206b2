"""``mptui attach`` on a real headless run: the app in tmux attaches, detaches (ctrl+d, the
terminal closing), attaches again and stops the run; TCP only with --listen, behind its token."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import psutil
from tmux_session import MPTUI, Tmux

from mptui.engine.api import attach
from mptui.engine.api import events as ev
from mptui.engine.session import files as session_files


def start_headless(session: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    """The demo run, headless, its stdout in a file; returns once it serves its socket."""
    out = session.parent / "headless.out"
    process = subprocess.Popen(
        [str(MPTUI), "--demo", "--headless", "--session", str(session), *extra],
        stdout=out.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while "attach with" not in out.read_text() or not (session / session_files.SOCKET).exists():
        assert process.poll() is None, out.read_text()
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.1)
    return process, out


def tcp_listeners(pid: int) -> list:
    return [c for c in psutil.Process(pid).net_connections("inet") if c.status == "LISTEN"]


def open_app(tmux: Tmux, session: Path) -> None:
    """``mptui attach SESSION`` in a fresh tmux session, until it shows the run."""
    command = f"TERM=xterm-256color {MPTUI} attach {session}; echo EXIT=$?; sleep 60"
    tmux.open(command, 120, 30)
    tmux.wait_for("attached to process")


def test_attach_detach_attach_again_then_stop_the_run(tmp_path):
    session = tmp_path / "session"
    run, out = start_headless(session)
    tmux = Tmux(tmp_path)
    try:
        assert tcp_listeners(run.pid) == []  # no --listen: nothing but the session's socket
        mode = (session / session_files.SOCKET).stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600

        open_app(tmux, session)  # 1: pause the run, then ctrl+d (which asks), y: leave it paused
        assert f"attached to process {run.pid}" in tmux.screen()
        tmux.wait_for("RUNNING")
        wait_for_file(session / session_files.PLAN)  # a step committed: there is history to replay
        tmux.run("send-keys", "-t", "demo", "space")
        tmux.wait_for("PAUSED")
        tmux.run("send-keys", "-t", "demo", "C-d")
        tmux.wait_for("Detach? The run is paused at step")
        tmux.run("send-keys", "-t", "demo", "y")
        left = tmux.wait_for("EXIT=0")
        assert re.search(r"detached; the run is paused at step \d+ and stays so", left), left
        assert run.poll() is None
        tmux.kill()

        open_app(tmux, session)  # 2: the whole picture, then the terminal goes
        screen = tmux.wait_for("PAUSED")
        committed = len(json.loads((session / session_files.PLAN).read_text())["steps"])
        assert re.search(r"step (\d+)", screen).group(1) == str(committed + 1), screen
        app = next(p for p in psutil.Process(pane_pid(tmux)).children() if p.name() != "sleep")
        tmux.kill()  # SIGHUP, and no terminal: as when the SSH link drops
        app.wait(timeout=20)
        assert run.poll() is None

        open_app(tmux, session)  # 3: stop the run from the app (q, s), see it end
        tmux.wait_for("PAUSED")
        tmux.run("send-keys", "-t", "demo", "q")
        tmux.wait_for("Detach? The run is paused at step")
        tmux.run("send-keys", "-t", "demo", "s")
        tmux.wait_for("STOPPED")
        tmux.wait_for("the run has ended (stopped)")
        assert run.wait(timeout=30) == 0
        tmux.run("send-keys", "-t", "demo", "q")  # the run is over: q leaves at once
        tmux.wait_for("EXIT=0")
    finally:
        tmux.kill()
        if run.poll() is None:
            run.kill()
    assert "finished (stopped)" in out.read_text()
    assert "Traceback" not in out.read_text()  # the server closed with a client attached
    summary = json.loads((session / session_files.SUMMARY_JSON).read_text())
    assert summary["steps"] == len(json.loads((session / session_files.PLAN).read_text())["steps"])
    assert not (session / session_files.SOCKET).exists()
    log = (session / session_files.LOG).read_text()
    assert log.count("(unix socket) attached") == 3 and log.count("detached") == 2
    assert "client 1 paused the run" in log and "client 3 stopped the run" in log
    assert "client 3 disconnected: the run has ended" in log  # it stayed to see the end


def wait_for_file(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def pane_pid(tmux: Tmux) -> int:
    return int(tmux.run("display-message", "-p", "-t", "demo", "#{pane_pid}").stdout)


def test_listen_serves_tcp_behind_its_token(tmp_path):
    session = tmp_path / "session"
    run, out = start_headless(session, "--listen", "127.0.0.1:0")
    try:
        printed = re.search(r"attach with: mptui attach (\S+) --token (\S+)", out.read_text())
        address, token = printed.groups()
        assert [c.laddr.port for c in tcp_listeners(run.pid)] == [int(address.split(":")[1])]
        assert stat.S_IMODE((session / session_files.TOKEN).stat().st_mode) == 0o600

        wrong = subprocess.run(
            [str(MPTUI), "attach", address, "--token", "guess"], capture_output=True, text=True
        )
        assert wrong.returncode == 2
        assert wrong.stderr == f"mptui: error: {address} refused the connection: wrong token\n"
        assert "refused 127.0.0.1:" in (session / session_files.LOG).read_text()

        remote = attach(address, token)
        seen: list[ev.Event] = []
        remote.subscribe(seen.append)
        remote.start()
        deadline = time.monotonic() + 30
        while not any(isinstance(e, ev.Loaded) for e in seen):
            assert time.monotonic() < deadline, seen
            time.sleep(0.1)
        run.send_signal(signal.SIGKILL)  # no goodbye: the socket file stays behind
        assert remote.join(timeout=10) and remote.finished is None
    finally:
        if run.poll() is None:
            run.kill()
        run.wait()
    stale = subprocess.run([str(MPTUI), "attach", str(session)], capture_output=True, text=True)
    assert stale.returncode == 2
    assert "was left by a run that was killed" in stale.stderr
    assert len(stale.stderr.splitlines()) == 1


def test_bad_listen_is_one_line_before_anything_starts(tmp_path):
    for extra, message in [
        (["--headless", "--listen", "7077"], "--listen wants HOST:PORT"),
        (["--listen", "127.0.0.1:7077"], "--listen serves a headless run: add --headless"),
    ]:
        session = tmp_path / "session"
        result = subprocess.run(
            [str(MPTUI), "--demo", "--session", str(session), *extra],
            capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 2
        assert result.stderr.startswith(f"mptui: error: {message}")
        assert len(result.stderr.splitlines()) == 1 and not session.exists()
