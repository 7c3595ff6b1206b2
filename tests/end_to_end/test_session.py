"""Sessions survive: a journal fsynced per commit, a lock, resume after SIGKILL, SIGHUP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import weights_file

from mptui.engine.search.plan import PlanStep
from mptui.engine.search.structures import Structure
from mptui.engine.session import files as session_files
from mptui.engine.session.folder import SessionFolder

MPTUI = Path(sys.executable).parent / "mptui"


def start(model: Path, calibration: Path, session: Path, *extra: str) -> subprocess.Popen:
    args = [
        str(MPTUI), str(model), "--headless", "--calibration", str(calibration),
        "--seqlen", "32", "--nsamples", "2", "--target-ratio", "0.45",
        "--distribution", "30:40:30", "--mlp-group", "40", "--session", str(session), *extra,
    ]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def resume(session: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MPTUI), "--resume", str(session), "--headless"], capture_output=True, text=True
    )


def journal_lines(session: Path) -> int:
    path = session / session_files.JOURNAL
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for_lines(session: Path, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while journal_lines(session) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def plan_of(session: Path) -> list[tuple]:
    plan = json.loads((session / session_files.PLAN).read_text())
    return [(s["structure"], s["chosen_by"], round(s["score"], 6)) for s in plan["steps"]]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, calibration_file, tmp_path_factory):
    session = tmp_path_factory.mktemp("base") / "session"
    process = start(tiny_model_dir("llama"), calibration_file, session)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert (session / session_files.SUMMARY_MD).exists()
    assert (session / session_files.SUMMARY_JSON).exists()
    assert (session / session_files.CHANNEL_ORDER).is_file()  # resume reads it back
    return plan_of(session)


@pytest.mark.parametrize("after_steps", [0, 1, 4])
def test_sigkill_then_resume_gives_the_uninterrupted_plan(
    after_steps, uninterrupted, tiny_model_dir, calibration_file, tmp_path
):
    session = tmp_path / "session"
    process = start(tiny_model_dir("llama"), calibration_file, session)
    if after_steps:
        wait_for_lines(session, after_steps, process)
    else:
        deadline = time.monotonic() + 60
        while not (session / session_files.SETTINGS).exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = journal_lines(session)
    assert kept >= after_steps
    result = resume(session)
    assert result.returncode == 0, result.stderr
    assert plan_of(session) == uninterrupted
    assert len(uninterrupted) > 4


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_a_signal_saves_and_stops_cleanly(
    signum, uninterrupted, tiny_model_dir, calibration_file, tmp_path
):
    """An SSH drop (SIGHUP) or a kill (SIGTERM) is a Stop: the plan is saved and resumable."""
    session = tmp_path / "session"
    process = start(tiny_model_dir("llama"), calibration_file, session)
    wait_for_lines(session, 2, process)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "finished (stopped)" in out
    assert (session / session_files.SUMMARY_MD).is_file()
    steps = plan_of(session)
    assert 2 <= len(steps) < len(uninterrupted)
    assert steps == uninterrupted[: len(steps)]
    assert resume(session).returncode == 0
    assert plan_of(session) == uninterrupted


def test_a_second_process_on_the_same_session_is_refused(tmp_path, tiny_model_dir):
    folder = SessionFolder(tmp_path / "session")
    folder.lock()
    (folder.path / session_files.SETTINGS).write_text("{}")
    result = resume(folder.path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"mptui: error: session {folder.path} is in use by process {os.getpid()}"
    )
    folder.unlock()


def test_journal_replays_undos_and_ignores_a_torn_line(tmp_path):
    folder = SessionFolder(tmp_path)
    for index in (1, 2, 3):
        folder.record_commit(PlanStep(index, Structure("mlp_block", index), 9.0, 100, 0.1, "user"))
    folder.record_undo(3)
    with (tmp_path / session_files.JOURNAL).open("a") as handle:
        handle.write('{"commit": {"index": 3, "struc')  # the process died mid-write
    assert [step.index for step in folder.read_journal().steps] == [1, 2]


def test_resume_of_something_that_is_not_a_session(tmp_path):
    result = resume(tmp_path)
    assert result.returncode == 2
    assert "is not an mptui session" in result.stderr


# --- everything the user decided survives a kill ---------------------------------------------
DRIVER = """
import sys, time
from pathlib import Path
from mptui.engine.control import commands as cmd, events as ev
from mptui.engine.session import files as session_files
from mptui.engine.api import CalibrationSpec, Engine, PruneSettings, RunRequest
from mptui.engine.session.folder import SessionFolder

model, calibration, session, *decisions = sys.argv[1:]
settings = PruneSettings.with_distribution(
    0.45, "30:40:30", calibration=CalibrationSpec(calibration, 2, 32), mlp_group=40
)
folder = SessionFolder(Path(session))
request = RunRequest(model, settings, order_file=folder.order_file)
folder.lock()
folder.write_request(request)
done = []
engine = Engine(request, [lambda e: done.append(e) if isinstance(e, ev.StepCommitted) else 0],
                journal=folder, plan_dirs=[folder.path])
engine.send(cmd.Pause())
commands = {"override": cmd.Override("L2.mlp"), "undo": cmd.Undo(),
            "order": cmd.SetOrder(("attn_heads", "blocks", "mlp_channels")),
            "guided": cmd.SetGuided(True)}
for decision in decisions:
    engine.send(commands[decision])
engine.start()
journal = folder.path / session_files.JOURNAL  # one line per decision, written as it is made
while not journal.exists() or len(journal.read_text().splitlines()) < len(decisions):
    time.sleep(0.01)
print("decided", flush=True)
time.sleep(600)
"""


def decide_then_kill(model: Path, calibration: Path, session: Path, *decisions: str) -> None:
    """A run that makes ``decisions`` while paused before its first step, then is SIGKILLed."""
    process = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(model), str(calibration), str(session), *decisions],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout.readline().strip() == "decided", process.communicate()
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize(
    "decisions, first",
    [
        (("override",), {"kind": "mlp_block", "layer": 2}),
        (("override", "undo"), "uninterrupted"),
        (("order",), None),
    ],
    ids=["override", "undo", "order"],
)
def test_decisions_survive_a_kill(
    decisions, first, uninterrupted, tiny_model_dir, calibration_file, tmp_path
):
    session = tmp_path / "session"
    decide_then_kill(tiny_model_dir("llama"), calibration_file, session, *decisions)
    result = resume(session)
    assert result.returncode == 0, result.stderr
    plan = json.loads((session / session_files.PLAN).read_text())
    steps = plan["steps"]
    if first == "uninterrupted":  # the override was undone: the engine's own plan
        assert plan_of(session) == uninterrupted
    elif first is not None:
        assert steps[0]["structure"] == first and steps[0]["chosen_by"] == "user"
        assert [s["chosen_by"] for s in steps[1:]] == ["engine"] * (len(steps) - 1)
    else:  # the switched order is the one the resumed run followed
        assert plan["settings"]["order"] == ["attn_heads", "blocks", "mlp_channels"]
        assert steps[0]["dimension"] == "attn_heads"


def test_guided_mode_survives_a_kill(tiny_model_dir, calibration_file, tmp_path):
    session = tmp_path / "session"
    decide_then_kill(tiny_model_dir("llama"), calibration_file, session, "guided")
    assert SessionFolder(session).read_run().request.settings.guided is True


def test_resume_writes_out_and_export_again(tiny_model_dir, calibration_file, tmp_path):
    session, out, export = tmp_path / "session", tmp_path / "out", tmp_path / "export"
    process = start(
        tiny_model_dir("llama"), calibration_file, session, "--out", str(out),
        "--export", str(export),
    )  # fmt: skip
    wait_for_lines(session, 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = resume(session)
    assert result.returncode == 0, result.stderr
    assert (
        json.loads((out / session_files.PLAN).read_text())["steps"]
        == json.loads((session / session_files.PLAN).read_text())["steps"]
    )
    assert weights_file(export).is_file()


def test_a_new_run_in_a_session_folder_is_refused(tiny_model_dir, calibration_file, tmp_path):
    session = tmp_path / "session"
    process = start(tiny_model_dir("llama"), calibration_file, session)
    process.communicate(timeout=300)
    before = {p.name: p.stat().st_mtime_ns for p in session.iterdir()}
    again = start(tiny_model_dir("llama"), calibration_file, session)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 2
    assert err.strip() == (
        f"mptui: error: '{session}' already holds a session; continue it with --resume "
        f"{session} or give --session a new folder"
    )
    assert {p.name: p.stat().st_mtime_ns for p in session.iterdir()} == before


def test_a_torn_line_is_cut_before_the_next_append(uninterrupted, tiny_model_dir,
                                                    calibration_file, tmp_path):  # fmt: skip
    session = tmp_path / "session"
    process = start(tiny_model_dir("llama"), calibration_file, session)
    wait_for_lines(session, 3, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    journal = session / session_files.JOURNAL
    lines = journal.read_text().splitlines()[:3]
    journal.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])  # torn
    for _ in range(2):  # the first resume appends after the torn line; the second reads it all
        result = resume(session)
        assert result.returncode == 0, result.stderr
        assert plan_of(session) == uninterrupted
    assert len(SessionFolder(session).read_journal().steps) == len(uninterrupted)
