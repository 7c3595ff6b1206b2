"""Driving a real terminal: the app in a tmux session of its own, keys in, screen out.

Shared by the tests that run ``mptui`` as a user over SSH would (tests/app, tests/end_to_end).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

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
        """Kill the server (SIGHUP to what runs in it) and wait until it is gone, so that the
        next ``open`` starts a fresh server. Gone is when nothing answers on its socket: tmux
        (3.3) leaves the socket file behind, so waiting for the file to go waited 10 s."""
        self.run("kill-server")
        path = Path(os.environ.get("TMUX_TMPDIR", "/tmp"), f"tmux-{os.getuid()}", self.socket)
        deadline = time.monotonic() + 10
        while _answers(path) and time.monotonic() < deadline:
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


def _answers(path: Path) -> bool:
    """Whether a server listens on the unix socket ``path`` (a left-behind file refuses)."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:  # no file, or nobody listening on it
            return False
    return True


def wait_gone(tmux: Tmux, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text in tmux.screen():
        assert time.monotonic() < deadline, f"{text!r} stayed on screen"
        time.sleep(0.2)
