"""The real app in tmux for a few seconds of search, and what its memory pane showed.

On a GPU machine the pane reads NVML (used/total as nvidia-smi shows it, torch's counters
beside it); on the CPU it says "no GPU". Either way this is the app a user runs, not a mock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Text that only the memory pane shows, with a GPU and without one.
PANE_MARKERS = ("used ", "torch ", "no GPU", "process ")


class _Tmux:
    """One private tmux server holding one window."""

    def __init__(self) -> None:
        self.socket = f"mptui-bench-{os.getpid()}"

    def __call__(self, *args: str) -> str:
        command = [shutil.which("tmux") or "tmux", "-L", self.socket, *args]
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self("capture-pane", "-p", "-t", "app")
            if text in screen or time.monotonic() > deadline:
                return screen
            time.sleep(0.25)


def pane_lines(screen: str) -> list[str]:
    """The memory pane's lines: the cell of each screen line that holds one of its markers."""
    out = []
    for line in screen.splitlines():
        for cell in line.split("│"):
            if any(marker in cell for marker in PANE_MARKERS):
                out.append(" ".join(cell.split()))
    return out


def capture_memory_pane(device: str, timeout: float = 120) -> list[str]:
    """Start ``mptui --demo`` on ``device`` in tmux, wait until it is scoring and the memory pane
    has a reading, and return that pane's lines (or one line saying why there are none)."""
    if shutil.which("tmux") is None:
        return ["skipped: tmux is not installed"]
    mptui = Path(sys.executable).parent / "mptui"
    tmux = _Tmux()
    with tempfile.TemporaryDirectory(prefix="mptui-gpu-check-") as folder:
        command = (
            f"cd {folder} && TERM=xterm-256color {mptui} --demo --device {device} "
            f"--session {folder}/session --out {folder}/out"
        )
        tmux("new-session", "-d", "-s", "app", "-x", "120", "-y", "32", command)
        try:
            tmux.wait_for("RUNNING", timeout)
            marker = "used " if device.startswith("cuda") else "no GPU"
            lines = pane_lines(tmux.wait_for(marker, timeout))
        finally:
            tmux("kill-server")
    return lines or [f"the memory pane showed no reading within {timeout:.0f} s"]
