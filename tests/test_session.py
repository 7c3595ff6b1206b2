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

from mptui.engine.journal import SessionFolder

MPTUI = Path(sys.executable).parent / "mptui"


def start(model: Path, calibration: Path, session: Path, *extra: str) -> subprocess.Popen:
    args = [
        str(MPTUI), str(model), "--headless", "--calibration", str(calibration),
        "--seqlen", "32", "--target-ratio", "0.45", "--distribution", "30:40:30",
        "--mlp-group", "40", "--session", str(session), *extra,
    ]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def resume(session: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MPTUI), "--resume", str(session), "--headless"], capture_output=True, text=True
    )


def journal_lines(session: Path) -> int:
    path = session / "journal.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for_lines(session: Path, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while journal_lines(session) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def plan_of(session: Path) -> list[tuple]:
    plan = json.loads((session / "plan.json").read_text())
    return [(s["structure"], s["chosen_by"], round(s["score"], 6)) for s in plan["steps"]]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, calibration_file, tmp_path_factory):
    session = tmp_path_factory.mktemp("base") / "session"
    process = start(tiny_model_dir("llama"), calibration_file, session)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert (session / "summary.md").exists() and (session / "summary.json").exists()
    assert (session / "channel_order.safetensors").is_file()  # resume reads it back
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
        while not (session / "settings.json").exists():
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


def test_sighup_saves_and_stops_cleanly(uninterrupted, tiny_model_dir, calibration_file, tmp_path):
    session = tmp_path / "session"
    process = start(tiny_model_dir("llama"), calibration_file, session)
    wait_for_lines(session, 2, process)
    process.send_signal(signal.SIGHUP)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "finished (stopped)" in out
    steps = plan_of(session)
    assert 2 <= len(steps) < len(uninterrupted)
    assert steps == uninterrupted[: len(steps)]
    assert resume(session).returncode == 0
    assert plan_of(session) == uninterrupted


def test_a_second_process_on_the_same_session_is_refused(tmp_path, tiny_model_dir):
    folder = SessionFolder(tmp_path / "session")
    folder.lock()
    (folder.path / "settings.json").write_text("{}")
    result = resume(folder.path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"mptui: error: session {folder.path} is in use by process {os.getpid()}"
    )
    folder.unlock()


def test_journal_replays_undos_and_ignores_a_torn_line(tmp_path):
    folder = SessionFolder(tmp_path)
    for index in (1, 2, 3):
        folder.record_commit({"index": index, "structure": {"kind": "mlp_block", "layer": index}})
    folder.record_undo(3)
    with (tmp_path / "journal.jsonl").open("a") as handle:
        handle.write('{"commit": {"index": 3, "struc')  # the process died mid-write
    assert [step["index"] for step in folder.read_steps()] == [1, 2]


def test_resume_of_something_that_is_not_a_session(tmp_path):
    result = resume(tmp_path)
    assert result.returncode == 2
    assert "is not an mptui session" in result.stderr
