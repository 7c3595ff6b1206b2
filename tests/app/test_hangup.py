"""The terminal going away (an SSH drop: tmux killed under the app) in every state of the run:
the app saves and exits within seconds, frees the session lock, and ``--resume`` works."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from tmux_session import MPTUI, Tmux

from mptui.engine.session import files as session_files

EXIT_WITHIN = 20  # seconds


def app_command(model: Path, calibration: Path, session: Path, *extra: str) -> str:
    args = [
        str(MPTUI), str(model), "--calibration", str(calibration), "--seqlen", "32",
        "--nsamples", "2",
        "--target-ratio", "0.45", "--distribution", "30:40:30", "--mlp-group", "40",
        "--session", str(session), *extra,
    ]  # fmt: skip
    return "TERM=xterm-256color " + " ".join(args)


#: Loaded at the app's start (as its sitecustomize): the engine holds at its first scored
#: candidate until it is asked to stop, so the run is RUNNING when the test looks, however late
#: it looks (the resume runs without it). Nothing is slowed: the hold is an engine subscriber,
#: and a Stop (the app quitting, or losing its terminal) is what lets the run go on.
HOLD_RUNNING = """\
from mptui.engine import runner
from mptui.engine.control import events

engine_init = runner.Engine.__init__


def holding(engine, *args, **kwargs):
    engine_init(engine, *args, **kwargs)
    held = []

    def hold(event):
        if isinstance(event, events.CandidateScored) and not held:
            held.append(event)
            engine._stop_requested.wait(120)

    engine.subscribe(hold)


runner.Engine.__init__ = holding
"""


def held_running(command: str, folder: Path) -> str:
    """``command`` with :data:`HOLD_RUNNING` loaded into its interpreter."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(HOLD_RUNNING)
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return f"PYTHONPATH={path} {command}"


def owner_pid(session: Path) -> int:
    deadline = time.monotonic() + 60
    while True:
        lock = session / session_files.LOCK
        text = lock.read_text() if lock.exists() else ""
        if text.startswith("process "):
            return int(text.split()[1])
        assert time.monotonic() < deadline, "the app never took the session lock"
        time.sleep(0.1)


def exited(pid: int) -> bool:
    """Gone, or a zombie: it has exited, and only waits for its parent (the tmux server, killed,
    so init) to reap it, which takes init a second or two in some containers."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_exit(pid: int) -> float:
    started = time.monotonic()
    while time.monotonic() - started < EXIT_WITHIN:
        if exited(pid):
            return time.monotonic() - started
        time.sleep(0.05)
    os.kill(pid, 9)
    raise AssertionError(f"the app was still running {EXIT_WITHIN} s after its terminal went")


def resume(session: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MPTUI), "--resume", str(session), "--headless"], capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, calibration_file, tmp_path_factory) -> list[dict]:
    """The structures of the same run, headless and never interrupted."""
    out = tmp_path_factory.mktemp("uninterrupted")
    command = app_command(tiny_model_dir("llama"), calibration_file, out / "session")
    args = [*command.split(" ", 1)[1].split(), "--headless"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return [
        s["structure"]
        for s in json.loads((out / "session" / session_files.PLAN).read_text())["steps"]
    ]


@pytest.mark.parametrize("state", ["running", "paused", "waiting", "done"])
def test_the_app_exits_when_its_terminal_goes(
    state, uninterrupted, tiny_model_dir, calibration_file, tmp_path
):
    session = tmp_path / "session"
    # paused: from waiting for the user, so that the run cannot end before the key arrives
    # (a tiny run pressed while RUNNING may already be DONE)
    extra = ("--guided",) if state in ("paused", "waiting") else ()
    tmux = Tmux(tmp_path)
    command = app_command(tiny_model_dir("llama"), calibration_file, session, *extra)
    if state == "running":  # a tiny run could be DONE before the screen is read
        command = held_running(command, tmp_path / "hold")
    tmux.open(command, 120, 40)
    try:
        pid = owner_pid(session)
        if state == "running":
            tmux.wait_for("RUNNING")
            tmux.wait_for("ppl")
        elif state == "paused":
            tmux.wait_for("WAITING FOR YOU")
            tmux.run("send-keys", "-t", "demo", "space")
            tmux.wait_for("PAUSED")
        elif state == "waiting":
            tmux.wait_for("WAITING FOR YOU")
        else:
            tmux.wait_for("DONE")
    finally:
        tmux.kill()  # what an SSH drop does to the app: SIGHUP, then no terminal
    wait_exit(pid)
    assert (session / session_files.SUMMARY_MD).is_file()  # the engine was stopped and joined
    result = resume(session)
    assert result.returncode == 0, result.stderr
    assert "finished (done)" in result.stdout
    plan = json.loads((session / session_files.PLAN).read_text())
    assert [s["structure"] for s in plan["steps"]] == uninterrupted


def test_quit_stops_the_engine_and_writes_the_summary(tiny_model_dir, calibration_file, tmp_path):
    session = tmp_path / "session"
    tmux = Tmux(tmp_path)
    command = held_running(
        app_command(tiny_model_dir("llama"), calibration_file, session), tmp_path / "hold"
    )
    tmux.open(command, 120, 40)
    try:
        pid = owner_pid(session)
        tmux.wait_for("RUNNING")
        tmux.quit()
        wait_exit(pid)
    finally:
        tmux.kill()
    summary = json.loads((session / session_files.SUMMARY_JSON).read_text())
    assert summary["steps"] == len(json.loads((session / session_files.PLAN).read_text())["steps"])
