"""The real app in tmux for a few seconds of search, and what its memory pane showed.

On a GPU machine the pane reads NVML (used/total as nvidia-smi shows it, torch's counters
beside it); on the CPU it says "no GPU". Either way this is the app a user runs, not a mock,
started as ``python -m mptui`` from this checkout (nothing needs to be installed). Where the app
cannot run (no textual, as on the bare GPU image; no tmux) or stops early, one line says so at
once: the check never waits on an app that is not there.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Text that only the memory pane shows, with a GPU and without one.
PANE_MARKERS = ("used ", "torch ", "no GPU", "process ")
#: Seconds the app's error notice may take to appear after its status line says ERROR.
NOTICE_GRACE = 5.0
#: The checkout this module runs from: the app is started from it.
CHECKOUT = Path(__file__).resolve().parent.parent


class _Tmux:
    """One private tmux server holding one window, kept on screen when its command ends."""

    def __init__(self) -> None:
        self.socket = f"mptui-bench-{os.getpid()}"

    def __call__(self, *args: str) -> str:
        command = [shutil.which("tmux") or "tmux", "-L", self.socket, *args]
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout

    def start(self, command: str) -> None:
        """Run ``command`` in the window, which stays (dead, its last output on screen) when
        the command ends: the shell the window opens with is told to become the command."""
        self("new-session", "-d", "-s", "app", "-x", "120", "-y", "32")
        self("set-option", "-w", "-t", "app", "remain-on-exit", "on")
        self("send-keys", "-t", "app", f"exec sh -c {shlex.quote(command)}", "Enter")

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "app")

    def app_exited(self) -> bool:
        return self("display-message", "-p", "-t", "app", "#{pane_dead}").strip() == "1"

    def wait_for(self, text: str, deadline: float) -> str:
        """The screen once it shows ``text``; raises AppStopped when the app exits or its run
        fails first (its status line then starts with ERROR; its notice follows within
        :data:`NOTICE_GRACE` seconds)."""
        failed_at = None
        while True:
            screen = self.screen()
            if text in screen or time.monotonic() > deadline:
                return screen
            lines = [" ".join(line.split()) for line in screen.splitlines() if line.strip()]
            if lines and lines[0].startswith("ERROR"):
                failed_at = failed_at or time.monotonic()
                notice = error_notice(lines)
                if notice or time.monotonic() > failed_at + NOTICE_GRACE:
                    raise AppStopped(f"ERROR: {notice or lines[0]}")
            if self.app_exited():
                printed = [line for line in lines if not line.startswith("Pane is dead")]
                raise AppStopped(" / ".join(printed[-3:]) or "nothing on screen")
            time.sleep(0.25)


class AppStopped(Exception):
    """The app ended, or its run failed, before the pane had a reading; the message is what
    its screen said last."""


def error_notice(lines: list[str]) -> str | None:
    """The message of the app's "engine error" notice, its wrapped lines joined (the status
    line cuts it short)."""
    cells = [line.rsplit("▌", 1)[-1].strip(" │─╯") if "▌" in line else "" for line in lines]
    if "engine error" not in cells:
        return None
    message = []
    for cell in cells[cells.index("engine error") + 1 :]:
        if not cell:
            break
        message.append(cell)
    return " ".join(message) or None


def pane_lines(screen: str) -> list[str]:
    """The memory pane's lines: the cell of each screen line that holds one of its markers."""
    out = []
    for line in screen.splitlines():
        for cell in line.split("│"):
            if any(marker in cell for marker in PANE_MARKERS):
                out.append(" ".join(cell.split()))
    return out


def why_not_runnable() -> str | None:
    """Why the app cannot be captured here, in a few words; None when it can."""
    if importlib.util.find_spec("textual") is None:
        return "skipped: textual is not installed here (the app needs it)"
    if shutil.which("tmux") is None:
        return "skipped: tmux is not installed here"
    return None


def capture_memory_pane(device: str, timeout: float = 60) -> list[str]:
    """Start ``python -m mptui --demo`` on ``device`` in tmux, wait until it is scoring and the
    memory pane has a reading, and return that pane's lines (or one line saying why not)."""
    reason = why_not_runnable()
    if reason is not None:
        return [reason]
    tmux = _Tmux()
    with tempfile.TemporaryDirectory(prefix="mptui-gpu-check-", ignore_cleanup_errors=True) as tmp:
        command = (
            f"cd {tmp} && PYTHONPATH={CHECKOUT} TERM=xterm-256color {sys.executable} -m mptui "
            f"--demo --device {device} --session {tmp}/session --out {tmp}/out"
        )
        tmux.start(command)
        deadline = time.monotonic() + timeout
        try:
            tmux.wait_for("RUNNING", deadline)
            marker = "used " if device.startswith("cuda") else "no GPU"
            lines = pane_lines(tmux.wait_for(marker, deadline))
        except AppStopped as stopped:
            return [f"the app stopped before its memory pane had a reading: {stopped}"]
        finally:
            tmux("kill-server")
    return lines or [f"the memory pane showed no reading within {timeout:.0f} s"]
