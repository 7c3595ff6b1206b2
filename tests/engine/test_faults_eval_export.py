"""No traceback, ever (issue 29), for the commands that work on a session: ``mptui eval
--session`` and ``mptui export`` meeting a lost device (simulated on the CPU as in
test_faults_device), while loading the model too; a session whose ``plan.json`` or
``journal.jsonl`` was replaced by a folder; ``--session`` naming a file.

A lost device is one line and exit status 1, saying what was being done and how to finish (the
same command again, on any device); bad input is one line and exit status 2. Either way nothing
in the session changes and nothing is exported."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers

from bench.tiny import tiny_text
from mptui.engine import api
from mptui.engine.model import rebuild
from mptui.engine.output import export
from mptui.engine.session import files as session_files
from tests.conftest import LOST, DeviceFault, arm_on_call, headless_session, run_cli

ON_ANY_DEVICE = "(on any device: add --device cuda:N or --device cpu)"


@pytest.fixture(scope="module")
def finished(tiny_model_dir, calibration_file, tmp_path_factory) -> Path:
    """A session a headless run finished, to be copied by each test."""
    folder = tmp_path_factory.mktemp("finished") / "session"
    return headless_session(tiny_model_dir("llama"), calibration_file, folder)


@pytest.fixture
def session(finished, tmp_path) -> Path:
    copy = tmp_path / "session"
    shutil.copytree(finished, copy)
    return copy


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "held-out.txt"
    path.write_text("\n\n".join(tiny_text(4)) + "\n")
    return path


def tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: a file by a hash of its bytes, a folder as ``dir``."""
    return {
        str(p.relative_to(folder)): "dir"
        if p.is_dir()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def one_line(argv: list[str], capsys, status: int, folder: Path) -> str:
    """Run ``mptui ARGV``: it must exit with ``status`` after exactly one error line and no
    traceback, and leave ``folder`` as it was. Returns the line, without its ``mptui: error:``."""
    before = tree(folder)
    code, err = run_cli(argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("mptui: error: ")]
    assert code == status, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert tree(folder) == before
    return errors[0].removeprefix("mptui: error: ")


def lost(during: str, session: Path, again: str) -> str:
    return (
        f"the GPU failed ({LOST}) while {during}; the session keeps every committed step: "
        f"run {again} again {ON_ANY_DEVICE}"
    )


def fail_after_loading(monkeypatch) -> None:
    """The weights are read, then copying them onto the device meets the lost device."""
    load = transformers.AutoModelForCausalLM.from_pretrained

    def failing(*args, **kwargs):
        load(*args, **kwargs)
        raise torch.AcceleratorError(LOST)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", failing)


# --- a lost device ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("phase", "during"),
    [
        ("load", "loading the model"),
        ("dense", "evaluating the dense model"),
        ("pruned", "evaluating the pruned model"),
    ],
)
def test_eval_of_a_session_on_a_lost_device(phase, during, session, text, capsys, monkeypatch):
    argv = ["eval", "--session", str(session), "--perplexity", str(text), "--seqlen", "32"]
    fault = DeviceFault()
    if phase == "load":
        fail_after_loading(monkeypatch)
    else:
        arm_on_call(monkeypatch, fault, api, "evaluate", {"dense": 1, "pruned": 2}[phase])
    with fault.installed():
        line = one_line(argv, capsys, 1, session)
    assert line == lost(during, session, f"mptui eval --session {session}")
    assert fault.fired == (phase != "load")
    assert not (session / session_files.EVALUATION).exists()

    monkeypatch.undo()  # the device is back: the same command finishes
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    scores = json.loads((session / session_files.EVALUATION).read_text())
    assert scores["dense"]["perplexity"] != scores["pruned"]["perplexity"]  # both, measured


def test_eval_of_a_model_on_a_lost_device(tiny_model_dir, text, tmp_path, capsys, monkeypatch):
    model = tiny_model_dir("llama")
    fault = DeviceFault()
    arm_on_call(monkeypatch, fault, api, "evaluate", 1)
    argv = ["eval", str(model), "--perplexity", str(text), "--seqlen", "32"]
    with fault.installed():
        line = one_line(argv, capsys, 1, model)
    assert line == f"the GPU failed ({LOST}) while evaluating; run mptui eval {model} again " + (
        ON_ANY_DEVICE
    )


def test_lm_eval_on_a_lost_device_is_told_as_one(session, local_task, capsys, monkeypatch):
    """lm-eval's own error, raised from the CUDA error, is the lost device, not bad input."""
    fault = DeviceFault()
    arm_on_call(monkeypatch, fault, api, "evaluate", 2)
    argv = ["eval", "--session", str(session), "--tasks", "mptui_mini", "--include-path",
            str(local_task), "--batch-size", "2"]  # fmt: skip
    with fault.installed():
        line = one_line(argv, capsys, 1, session)
    assert fault.fired == 1
    assert line == lost("evaluating the pruned model", session, f"mptui eval --session {session}")


@pytest.mark.parametrize(
    ("phase", "during"),
    [("load", "loading the model"), ("plan", "re-applying the plan"), ("write", "exporting")],
)
def test_export_on_a_lost_device(phase, during, session, tmp_path, capsys, monkeypatch):
    out = tmp_path / "export"
    if phase == "load":
        fail_after_loading(monkeypatch)
    elif phase == "plan":

        def reorder_fails(*args, **kwargs):  # the channel order's permutation meets it
            raise torch.AcceleratorError(LOST)

        monkeypatch.setattr(rebuild, "apply_plan", reorder_fails)
    else:

        def copy_fails(*args):  # the copy of the weights to the host meets the lost device
            raise RuntimeError(f"{LOST}\nCUDA kernel errors might be asynchronously reported")

        monkeypatch.setattr(export, "_kept_tensors", copy_fails)
    during = f"exporting to {out}" if phase == "write" else during
    argv = ["export", str(session), "--out", str(out)]
    line = one_line(argv, capsys, 1, session)
    assert line == lost(during, session, f"mptui export {session} --out {out}")
    assert not out.exists()

    monkeypatch.undo()
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert (out / "config.json").is_file()


def test_the_export_line_repeats_the_format_options(session, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pruned.gguf"
    fail_after_loading(monkeypatch)
    argv = ["export", str(session), "--out", str(out), "--format", "gguf", "--gguf-type", "f32"]
    line = one_line(argv, capsys, 1, session)
    again = f"mptui export {session} --out {out} --format gguf --gguf-type f32"
    assert line == lost("loading the model", session, again)
    assert not out.exists()


# --- session files that are folders, and a session that is a file ---------------------------
def commands(session: Path, text: Path, out: Path) -> dict[str, list[str]]:
    return {
        "resume": ["--resume", str(session), "--headless"],
        "export": ["export", str(session), "--out", str(out)],
        "eval": ["eval", "--session", str(session), "--perplexity", str(text), "--seqlen", "32"],
    }


@pytest.mark.parametrize("command", ["resume", "export", "eval"])
@pytest.mark.parametrize(
    ("name", "role"), [(session_files.PLAN, "plan"), (session_files.JOURNAL, "journal")]
)
def test_a_session_file_replaced_by_a_folder(
    name, role, command, session, text, tmp_path, capsys
):  # fmt: skip
    path = session / name
    path.unlink()
    path.mkdir()
    out = tmp_path / "export"
    line = one_line(commands(session, text, out)[command], capsys, 2, session)
    assert line == f"{path} is a directory, where the session keeps its {role} file"
    assert not out.exists()


@pytest.mark.parametrize(
    "name", [session_files.SETTINGS, session_files.LOCK, session_files.CHANNEL_ORDER]
)
def test_the_files_a_resume_reads_or_locks_first(name, session, capsys):
    path = session / name
    path.unlink()
    path.mkdir()
    line = one_line(["--resume", str(session), "--headless"], capsys, 2, session)
    assert line.startswith(f"{path} is a directory, where the session keeps its ")


@pytest.mark.parametrize("command", ["run", "resume", "export", "eval"])
def test_a_session_that_is_a_file(
    command, tiny_model_dir, calibration_file, text, tmp_path, capsys
):  # fmt: skip
    file = tmp_path / "notes.txt"
    file.write_text("not a session\n")
    out = tmp_path / "export"
    argv = commands(file, text, out).get(command) or [
        str(tiny_model_dir("llama")), "--headless", "--calibration", str(calibration_file),
        "--seqlen", "32", "--nsamples", "2", "--session", str(file),
    ]  # fmt: skip
    line = one_line(argv, capsys, 2, tmp_path)
    assert line == f"'{file}' is a file, not a session folder"
    assert file.read_text() == "not a session\n" and not out.exists()


def test_a_session_folder_under_a_file(tiny_model_dir, calibration_file, tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("not a folder\n")
    argv = [str(tiny_model_dir("llama")), "--headless", "--calibration", str(calibration_file),
            "--seqlen", "32", "--nsamples", "2", "--session", str(file / "run")]  # fmt: skip
    line = one_line(argv, capsys, 2, tmp_path)
    assert line == f"'{file / 'run'}' cannot be a session folder: '{file}' is a file"
