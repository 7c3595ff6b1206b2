"""A session file edited, truncated or copied in from elsewhere: every reader that meets it
(``--resume``, ``mptui export``, ``mptui eval --session``, a recovery's resume) says so in one
line naming the file and the line or key, exits with status 2, and changes no file."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from bench.tiny import tiny_text
from mptui.engine.model.channel_order import read_order, write_order
from mptui.engine.recovery.folder import RecoveryFolder
from mptui.engine.recovery.run import prepare_recovery
from mptui.engine.recovery.settings import RecoverySettings
from mptui.engine.recovery.source import RecoverySource
from mptui.engine.session import files as session_files
from tests.conftest import run_cli

RUN = ["--headless", "--seqlen", "32", "--nsamples", "2", "--target-ratio", "0.3",
       "--distribution", "30:40:30", "--mlp-group", "40"]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tiny_model_dir, calibration_file, tmp_path_factory) -> Path:
    """A session a headless run finished (a few steps of every kind)."""
    from mptui.cli import main

    session = tmp_path_factory.mktemp("faults") / "session"
    model = tiny_model_dir("llama")
    assert main([str(model), "--calibration", str(calibration_file), "--session", str(session),
                 *RUN]) == 0  # fmt: skip
    return session


@pytest.fixture
def session(finished, tmp_path) -> Path:
    copy = tmp_path / "session"
    shutil.copytree(finished, copy)
    return copy


def folder_hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the lock too) and a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(argv: list[str], session: Path, capsys) -> str:
    """Run ``mptui ARGV``; it must exit 2 with one error line and leave ``session`` as it was.
    Returns the line."""
    before = folder_hashes(session)
    code, err = run_cli(argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("mptui: error: ")]
    assert code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert folder_hashes(session) == before
    return errors[0]


def resume(session: Path) -> list[str]:
    return ["--resume", str(session), "--headless"]


def journal_lines(session: Path) -> list[str]:
    return (session / session_files.JOURNAL).read_text().splitlines()


def test_garbage_in_the_middle_of_the_journal_is_named_by_its_line(session, capsys):
    lines = journal_lines(session)
    assert len(lines) >= 3
    damaged = [*lines[:1], "}}not json at all", *lines[1:]]
    (session / session_files.JOURNAL).write_text("\n".join(damaged) + "\n")
    line = refused(resume(session), session, capsys)
    assert f"{session / session_files.JOURNAL} line 2 is not a journal record" in line


def test_a_journal_step_that_no_longer_fits_the_model_is_named_by_its_line(session, capsys):
    lines = journal_lines(session)
    record = json.loads(lines[1])
    record["commit"]["structure"]["layer"] = 9  # the tiny model has 4 layers
    lines[1] = json.dumps(record)
    (session / session_files.JOURNAL).write_text("\n".join(lines) + "\n")
    line = refused(resume(session), session, capsys)
    assert f"{session / session_files.JOURNAL} line 2: step 2" in line
    assert "does not fit the model (the model has 4 layers)" in line


def test_a_width_step_wider_than_the_layer_is_named_by_its_line(session, capsys):
    lines = journal_lines(session)
    number, record = next(
        (n, r) for n, r in enumerate(map(json.loads, lines), start=1)
        if r.get("commit", {}).get("structure", {}).get("kind") == "mlp_channels"
    )  # fmt: skip
    record["commit"]["structure"]["width_after"] = 500  # the MLP is 176 channels wide
    lines[number - 1] = json.dumps(record)
    (session / session_files.JOURNAL).write_text("\n".join(lines) + "\n")
    line = refused(resume(session), session, capsys)
    assert f"line {number}: step {record['commit']['index']}" in line
    assert "channels wide" in line


@pytest.mark.parametrize("command", ["resume", "export", "eval"])
def test_a_truncated_settings_file(command, session, tmp_path, capsys):
    path = session / session_files.SETTINGS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(tiny_text(4)) + "\n")
    argv = {
        "resume": resume(session),
        "export": ["export", str(session), "--out", str(tmp_path / "export")],
        "eval": ["eval", "--session", str(session), "--perplexity", str(text), "--seqlen", "32"],
    }[command]
    line = refused(argv, session, capsys)
    assert f"{path} is damaged (" in line and "line " in line  # where json stopped reading
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("command", ["resume", "export"])
def test_the_plan_of_another_model(command, session, tiny_model_dir, tmp_path, capsys):
    path = session / session_files.PLAN
    plan = json.loads(path.read_text())
    other = str(tiny_model_dir("qwen2"))
    plan["model"]["name_or_path"] = other
    path.write_text(json.dumps(plan, indent=2))
    argv = resume(session) if command == "resume" else ["export", str(session), "--out",
                                                         str(tmp_path / "export")]  # fmt: skip
    line = refused(argv, session, capsys)
    assert f"{path} is the plan of another model (its model.name_or_path is {other!r}" in line


@pytest.mark.parametrize("command", ["resume", "export"])
def test_a_channel_order_of_the_wrong_shape(command, session, tmp_path, capsys):
    path = session / session_files.CHANNEL_ORDER
    orders = read_order(path)
    orders[1]["mlp"] = torch.arange(160)  # the MLP is 176 channels wide
    write_order(path, orders)
    argv = resume(session) if command == "resume" else ["export", str(session), "--out",
                                                         str(tmp_path / "export")]  # fmt: skip
    line = refused(argv, session, capsys)
    assert f"{path} key '1.mlp' is not an order of this model's 176 channels (shape (160,))" in line


@pytest.fixture
def recovered(session, tmp_path) -> Path:
    """``session`` with a recovery of rank 4 saved after its first steps."""
    data = tmp_path / "text.txt"
    data.write_text("\n\n".join(tiny_text(8)) + "\n")
    settings = RecoverySettings(data=str(data), steps=2, batch_size=2, grad_accum=1, seqlen=32,
                                rank=4, save_every=1, eval_every=2, val_examples=2)  # fmt: skip
    source = RecoverySource("session", session)
    model, tokenizer, _ = source.load()
    run = prepare_recovery(
        model, tokenizer, settings, RecoveryFolder(session), lambda e: None, source
    )
    run.run(poll=lambda: run.step >= 1)  # stopped (and saved) after one step: resumable
    return session


def of_rank_two(checkpoint: Path) -> None:
    """Replace ``checkpoint`` by one of the same run whose adapters are of rank 2."""
    state = torch.load(checkpoint, weights_only=True)
    state["adapter"] = {
        key: tensor[:2] if "lora_A" in key else tensor[:, :2]
        for key, tensor in state["adapter"].items()
    }
    torch.save(state, checkpoint)


@pytest.mark.parametrize("command", ["resume", "export"])
def test_a_recovery_checkpoint_of_another_rank(command, recovered, tmp_path, capsys):
    folder = RecoveryFolder(recovered)
    of_rank_two(folder.checkpoint)
    argv = resume(recovered) if command == "resume" else ["export", str(recovered), "--out",
                                                          str(tmp_path / "export")]  # fmt: skip
    line = refused(argv, recovered, capsys)
    assert f"{folder.checkpoint} key '" in line
    assert "lora_A.weight' is of rank 2; this recovery's settings.json says rank 4" in line


def test_an_untouched_session_still_resumes(session, capsys):
    """The checks refuse nothing whole: a finished session resumes to the same plan."""
    before = json.loads((session / session_files.PLAN).read_text())["steps"]
    code, err = run_cli(resume(session), capsys)
    assert code == 0, err
    assert json.loads((session / session_files.PLAN).read_text())["steps"] == before
