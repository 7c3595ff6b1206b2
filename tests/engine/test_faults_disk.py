"""A full disk at every kind of write a run makes: one line naming the folder and the file, the
run ends (export and evaluation: the run goes on and says so), nothing half-written is left
where a reader would take it for whole, and once space is freed ``--resume`` finishes to the
plan of an uninterrupted run.

The disk fills at the OS's write (``disk_full``, tests/conftest.py): ``os.write`` fails with
ENOSPC from the Nth write to a file of a given name on (a temporary file written to be renamed
over that name counts as it).
Libraries that write by themselves (safetensors' export shards) meet a real full disk: a small
tmpfs (``small_disk``; the app's export to it is in tests/app/test_app_faults.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.tiny import tiny_text
from mptui.engine.api import (
    CalibrationSpec,
    DiskFull,
    Engine,
    EvalRequest,
    PruneSettings,
    RecoveryFolder,
    RecoverySettings,
    RecoverySource,
    RunRequest,
    SessionFolder,
    SessionRecorder,
    commands,
    events,
)
from mptui.engine.recovery.run import prepare_recovery
from mptui.engine.session import files as session_files
from tests.conftest import run_cli
from tests.engine.test_recovery import make_session

RUN = ["--headless", "--seqlen", "32", "--nsamples", "2", "--target-ratio", "0.3",
       "--distribution", "30:40:30", "--mlp-group", "40"]  # fmt: skip


def start_args(model: Path, calibration: Path, session: Path, *extra: str) -> list[str]:
    return [str(model), "--calibration", str(calibration), "--session", str(session), *RUN,
            *extra]  # fmt: skip


def plan_steps(folder: Path) -> list[dict]:
    return json.loads((folder / session_files.PLAN).read_text())["steps"]


def comparable(steps: list[dict]) -> list[tuple]:
    return [(s["structure"], s["chosen_by"], round(s["score"], 6)) for s in steps]


@pytest.fixture(scope="module")
def whole_session(tiny_model_dir, calibration_file, tmp_path_factory) -> Path:
    from mptui.cli import main

    session = tmp_path_factory.mktemp("whole") / "session"
    assert main(start_args(tiny_model_dir("llama"), calibration_file, session)) == 0
    return session


@pytest.fixture(scope="module")
def uninterrupted(whole_session) -> list[tuple]:
    steps = comparable(plan_steps(whole_session))
    assert len(steps) >= 4
    return steps


def writes_before_second_commit(name: str, whole_session: Path) -> int:
    """How many writes to ``name`` an uninterrupted run makes before the one of its second step
    (the events log: the lines before its second StepCommitted)."""
    if name != session_files.EVENTS:
        return 2  # the journal and plan.json: one write a step
    events = whole_lines(whole_session / session_files.EVENTS)
    return [i for i, e in enumerate(events) if e["event"] == "StepCommitted"][1]


def no_temporary_files(folder: Path) -> bool:
    """Nothing half-written beside the files: every writer's temporary name starts with '.'."""
    return not [p for p in folder.rglob(".*") if p.is_file()]


def whole_lines(path: Path) -> list[dict]:
    text = path.read_text()
    assert not text or text.endswith("\n"), "a half-written line was left"
    return [json.loads(line) for line in text.splitlines()]


def the_error(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("mptui: error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("name", [session_files.JOURNAL, session_files.PLAN, session_files.EVENTS])
def test_a_full_disk_ends_the_run_with_one_line_and_resume_finishes_the_plan(
    name, disk_full, whole_session, uninterrupted, tiny_model_dir, calibration_file, tmp_path,
    capsys, monkeypatch,
):  # fmt: skip
    session = tmp_path / "session"
    refused = disk_full(name, writes_before_second_commit(name, whole_session))
    code, err = run_cli(start_args(tiny_model_dir("llama"), calibration_file, session), capsys)
    assert refused and code == 1
    assert the_error(err) == (
        f"mptui: error: no space left on device in {session} while writing {name}: free space, "
        f"then continue with mptui --resume {session}"
    )
    assert no_temporary_files(session)
    journal = whole_lines(session / session_files.JOURNAL)
    whole_lines(session / session_files.EVENTS)
    kept = plan_steps(session)
    assert comparable(kept) == uninterrupted[: len(kept)] and len(kept) < len(uninterrupted)
    assert len(journal) >= len(kept)
    monkeypatch.undo()  # space is freed
    code, err = run_cli(["--resume", str(session), "--headless"], capsys)
    assert code == 0, err
    assert comparable(plan_steps(session)) == uninterrupted


def test_a_full_disk_under_out_names_that_folder(
    disk_full, uninterrupted, tiny_model_dir, calibration_file, tmp_path, capsys, monkeypatch
):
    session, out = tmp_path / "session", tmp_path / "out"
    refused = disk_full(session_files.PLAN, 1, out)  # --out gets its first plan.json only
    argv = start_args(tiny_model_dir("llama"), calibration_file, session, "--out", str(out))
    code, err = run_cli(argv, capsys)
    assert refused and code == 1
    assert f"no space left on device in {out} while writing plan.json" in the_error(err)
    assert no_temporary_files(out) and len(plan_steps(out)) == 1
    monkeypatch.undo()
    assert run_cli(["--resume", str(session), "--headless"], capsys)[0] == 0
    assert comparable(plan_steps(out)) == comparable(plan_steps(session)) == uninterrupted


def test_a_full_disk_at_the_settings_refuses_the_run_and_a_second_try_runs(
    disk_full, uninterrupted, tiny_model_dir, calibration_file, tmp_path, capsys, monkeypatch
):
    session = tmp_path / "session"
    disk_full(session_files.SETTINGS, 0)
    argv = start_args(tiny_model_dir("llama"), calibration_file, session)
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert the_error(err) == (
        f"mptui: error: no space left on device in {session} while writing settings.json"
    )
    assert not (session / session_files.SETTINGS).exists() and no_temporary_files(session)
    monkeypatch.undo()
    assert run_cli(argv, capsys)[0] == 0  # nothing of a session was left: the same command runs
    assert comparable(plan_steps(session)) == uninterrupted


def test_a_full_disk_at_the_evaluation_results_is_a_notice_and_the_run_goes_on(
    disk_full, tiny_model_dir, calibration_file, tmp_path
):
    settings = PruneSettings.with_distribution(
        0.3, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 2, 32), mlp_group=40
    )
    folder = SessionFolder(tmp_path / "session")
    folder.path.mkdir()
    engine = Engine(
        RunRequest(str(tiny_model_dir("llama")), settings), linger=True, journal=folder,
        plan_dirs=[folder.path], session_dir=folder.path,
    )  # fmt: skip
    seen: list = []
    engine.subscribe(SessionRecorder(folder, engine.plan))
    engine.subscribe(seen.append)
    refused = disk_full(session_files.EVALUATION, 0)
    engine.start()
    try:
        wait_for(lambda: any(isinstance(e, events.StepCommitted) for e in seen))
        engine.send(commands.Pause())
        engine.send(commands.Evaluate(EvalRequest(text=str(calibration_file), seqlen=32)))
        wait_for(lambda: any(isinstance(e, events.Evaluated) for e in seen))
        engine.send(commands.Resume())  # the run goes on, to its end
        wait_for(lambda: any(isinstance(e, events.Finished) for e in seen))
    finally:
        engine.send(commands.Stop())
        engine.join()
    notices = [e.message for e in seen if isinstance(e, events.Notice)]
    assert (
        refused
        and (
            f"the evaluation is shown but not saved: no space left on device in {folder.path} "
            "while writing evaluation.json"
        )
        in notices
    )
    assert engine.result.reason == "done" and engine.failure is None
    assert not (folder.path / session_files.EVALUATION).exists()
    assert no_temporary_files(folder.path)


def wait_for(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_full_disk_at_the_recovery_checkpoint_keeps_the_last_one(
    disk_full, tmp_path, tiny_model_dir
):
    session = make_session(tmp_path / "session", tiny_model_dir("llama"))
    data = tmp_path / "text.txt"
    data.write_text("\n\n".join(tiny_text(8)) + "\n")
    settings = RecoverySettings(data=str(data), steps=3, batch_size=2, grad_accum=1, seqlen=32,
                                rank=4, save_every=1, eval_every=3, val_examples=2)  # fmt: skip
    source = RecoverySource("session", session)
    model, tokenizer, _ = source.load()
    folder = RecoveryFolder(session)
    run = prepare_recovery(model, tokenizer, settings, folder, lambda e: None, source)
    disk_full(session_files.RECOVERY_CHECKPOINT, 2)  # the one before training, then step 1
    with pytest.raises(DiskFull) as raised:
        run.run()
    assert str(raised.value) == (
        f"no space left on device in {folder.path} while writing checkpoint.pt"
    )
    assert folder.saved_step() == 1 and no_temporary_files(session)


def test_an_export_to_a_full_disk_is_one_line_and_keeps_the_session(
    small_disk, whole_session, uninterrupted, tiny_model_dir, calibration_file, tmp_path, capsys
):
    session, export = tmp_path / "session", small_disk / "export"
    argv = start_args(tiny_model_dir("llama"), calibration_file, session, "--export", str(export))
    code, err = run_cli(argv, capsys)
    assert code == 1
    assert the_error(err) == (
        f"mptui: error: the export failed: no space left on device in {small_disk} while "
        "writing the export 'export' (none of it was kept)"
    )
    assert list(small_disk.iterdir()) == []  # the staging folder went with the failure
    assert comparable(plan_steps(session)) == uninterrupted
