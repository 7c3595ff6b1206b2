"""The real ``mptui --demo`` in tmux: keys in, screen out, as a user over SSH sees it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mptui.engine import session_files

MPTUI = Path(sys.executable).parent / "mptui"
TMUX = shutil.which("tmux") or "tmux"


class Tmux:
    def __init__(self, tmp_path: Path) -> None:
        self.socket = f"mptui-test-{os.getpid()}"
        self.tmp_path = tmp_path

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [TMUX, "-L", self.socket, *args], capture_output=True, text=True, check=False
        )

    def open(self, command: str, width: int, height: int) -> None:
        """A detached session "demo" running ``command``; retried while a previous server of
        the same socket is still shutting down (new-session then fails and nothing runs)."""
        size = ("-x", str(width), "-y", str(height))
        deadline = time.monotonic() + 30
        while (started := self.run("new-session", "-d", "-s", "demo", *size, command)).returncode:
            assert time.monotonic() < deadline, started.stderr
            time.sleep(0.2)

    def kill(self) -> None:
        """Kill the server (SIGHUP to what runs in it) and wait until its socket is gone, so
        that the next ``open`` starts a fresh server."""
        self.run("kill-server")
        socket = Path(os.environ.get("TMUX_TMPDIR", "/tmp"), f"tmux-{os.getuid()}", self.socket)
        deadline = time.monotonic() + 10
        while socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "demo").stdout

    def wait_for(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared; screen:\n{self.screen()}")

    def alive(self) -> bool:
        return self.run("has-session", "-t", "demo").returncode == 0

    def quit(self, timeout: float = 60) -> None:
        """Quit the app as a user does (q, then y) and wait until it is gone."""
        self.run("send-keys", "-t", "demo", "q")
        self.wait_for("Quit mptui?")
        self.run("send-keys", "-t", "demo", "y")
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not self.alive(), self.screen()


def wait_gone(tmux: Tmux, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text in tmux.screen():
        assert time.monotonic() < deadline, f"{text!r} stayed on screen"
        time.sleep(0.2)


def test_demo_in_tmux(tmp_path):
    tmux = Tmux(tmp_path)
    out, session = tmp_path / "out", tmp_path / "session"
    command = f"cd {tmp_path} && TERM=xterm-256color {MPTUI} --demo --out {out} --session {session}"
    tmux.open(command, 100, 30)
    try:
        screen = tmux.wait_for("Removed per layer")
        assert "Candidates" in screen and "Perplexity" in screen and "Memory" in screen
        tmux.wait_for("RUNNING")
        tmux.wait_for("ppl")
        tmux.run("send-keys", "-t", "demo", "space")
        tmux.wait_for("PAUSED")
        tmux.wait_for("no GPU")  # the memory pane, once the start-up notices have faded
        tmux.run("send-keys", "-t", "demo", "?")
        tmux.wait_for("pause / resume")
        tmux.run("send-keys", "-t", "demo", "Escape")
        wait_gone(tmux, "pause / resume")  # a key right after Escape would read as alt+key
        tmux.quit()
        assert (out / session_files.PLAN).exists()
        assert (session / session_files.LOG).exists()
        assert (session / session_files.SETTINGS).exists()
    finally:
        tmux.kill()
