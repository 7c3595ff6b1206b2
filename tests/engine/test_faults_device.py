"""A lost device (issue 23): a CUDA error from a forward, simulated on the CPU by a module hook,
at a candidate, in a commit's cache refresh, in a recovery, or in the export. The run ends with
one line naming what failed and how to resume, the journal keeps exactly the committed steps,
and ``--resume`` (on another device) finishes to the plan of an uninterrupted run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import transformers
from test_recovery import Killed, adapter, make_session, settings, start

from bench.tiny import tiny_text
from mptui.cli import main as cli_main
from mptui.engine.model.device_failure import is_device_failure
from mptui.engine.output import export
from mptui.engine.recovery.folder import RecoveryFolder
from mptui.engine.recovery.run import prepare_recovery
from mptui.engine.recovery.source import RecoverySource
from mptui.engine.recovery.trainer import Trainer
from mptui.engine.search.pruning import Pruning
from mptui.engine.search.structures import Structure
from mptui.engine.session import files as session_files
from mptui.engine.session.folder import SessionFolder
from tests.conftest import LOST, DeviceFault, arm_on_call


def run(session: Path, model: Path, calibration: Path, *extra: str) -> int:
    return cli_main(
        [str(model), "--headless", "--calibration", str(calibration), "--seqlen", "32",
         "--nsamples", "2", "--target-ratio", "0.45", "--distribution", "30:40:30",
         "--mlp-group", "40", "--session", str(session), *extra]
    )  # fmt: skip


def plan_of(session: Path) -> list[tuple]:
    plan = json.loads((session / session_files.PLAN).read_text())
    return [(s["structure"], s["chosen_by"], round(s["score"], 6)) for s in plan["steps"]]


def journal_of(session: Path) -> list[str]:
    return [step.structure.id for step in SessionFolder(session).read_journal().steps]


def one_error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("mptui: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def resume_line(session: Path) -> str:
    return (
        f"; the session keeps every committed step: mptui --resume {session} "
        "(on any device: add --device cuda:N or --device cpu)"
    )


@pytest.fixture(scope="module")
def recovery_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recovery") / "text.txt"
    path.write_text("\n\n".join(tiny_text(12)) + "\n")  # as test_recovery trains on
    return path


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, calibration_file, tmp_path_factory) -> list[tuple]:
    session = tmp_path_factory.mktemp("whole") / "session"
    assert run(session, tiny_model_dir("llama"), calibration_file) == 0
    return plan_of(session)


def test_errors_that_mean_a_lost_device_and_those_that_do_not():
    assert is_device_failure(torch.AcceleratorError(LOST))
    assert is_device_failure(RuntimeError("CUDA error: device-side assert triggered"))
    assert is_device_failure(RuntimeError("NCCL error in: ... unhandled cuda error"))
    wrapped = ValueError("compile failed")
    wrapped.__cause__ = RuntimeError("CUDA error: unspecified launch failure")
    assert is_device_failure(wrapped)
    assert not is_device_failure(RuntimeError("CUDA error: out of memory"))  # the OOM fallback
    assert not is_device_failure(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED"))
    assert not is_device_failure(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_device_failure(RuntimeError("shape mismatch"))


@pytest.mark.parametrize(
    ("method", "call", "during", "kept"),
    [
        ("candidate_row_nll", 18, "scoring candidate 3 of 3 in step 3", 2),  # 8 + 7 before it
        ("commit", 1, "committing L2.attn as step 1", 0),  # refreshes L3
    ],
    ids=["at-a-candidate", "in-a-commit-refresh"],
)
def test_a_lost_device_keeps_the_committed_steps_and_resume_finishes_the_plan(
    method, call, during, kept, uninterrupted, tiny_model_dir, calibration_file, tmp_path, capsys,
    monkeypatch,
):  # fmt: skip
    session, model = tmp_path / "session", tiny_model_dir("llama")
    fault = DeviceFault()
    arm_on_call(monkeypatch, fault, Pruning, method, call)
    with fault.installed():
        status = run(session, model, calibration_file)
    out, err = capsys.readouterr()
    assert status == 1 and fault.fired == 1
    assert one_error_line(err) == (
        f"mptui: error: the GPU failed ({LOST}) while {during}" + resume_line(session)
    )
    printed = re.findall(r"^step +\d+ +\S+ +(\S+)", out, re.MULTILINE)
    journal = journal_of(session)  # the committed steps, nothing from the failed one
    assert journal == printed == [Structure.from_dict(s[0]).id for s in uninterrupted[:kept]]

    monkeypatch.undo()
    assert cli_main(["--resume", str(session), "--headless", "--device", "cpu"]) == 0
    assert plan_of(session) == uninterrupted


def test_a_lost_device_while_exporting_is_one_line_and_resume_exports(
    uninterrupted, tiny_model_dir, calibration_file, tmp_path, capsys, monkeypatch
):
    session, out_dir = tmp_path / "session", tmp_path / "export"
    real = export._kept_tensors

    def copy_fails(*args):  # the copy of the weights to the host meets the lost device
        raise RuntimeError(f"{LOST}\nCUDA kernel errors might be asynchronously reported")

    monkeypatch.setattr(export, "_kept_tensors", copy_fails)
    status = run(session, tiny_model_dir("llama"), calibration_file, "--export", str(out_dir))
    assert status == 1
    assert one_error_line(capsys.readouterr().err) == (
        f"mptui: error: the GPU failed ({LOST}) while exporting to {out_dir}" + resume_line(session)
    )
    assert plan_of(session) == uninterrupted and not out_dir.exists()
    monkeypatch.setattr(export, "_kept_tensors", real)
    assert cli_main(["--resume", str(session), "--headless"]) == 0
    assert (out_dir / "config.json").is_file() and plan_of(session) == uninterrupted


def test_a_lost_device_while_recovering_keeps_the_saved_state_and_resume_finishes(
    tiny_model_dir, recovery_text, tmp_path, capsys, monkeypatch
):
    model = tiny_model_dir("llama")
    whole = make_session(tmp_path / "whole", model)
    start(whole, settings(recovery_text))[0].run()
    session = make_session(tmp_path / "session", model)
    polls = iter(range(100))

    def kill_after_three_steps() -> bool:
        if next(polls) == 3:
            raise Killed
        return False

    with pytest.raises(Killed):
        start(session, settings(recovery_text))[0].run(poll=kill_after_three_steps)
    assert RecoveryFolder(session).saved_step() == 2

    fault = DeviceFault(lambda: RuntimeError(f"{LOST} (injected)"))
    arm_on_call(monkeypatch, fault, Trainer, "train_step", 1)  # the resumed recovery's first
    with fault.installed():
        assert cli_main(["--resume", str(session), "--headless"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line == (
        f"mptui: error: the GPU failed ({LOST} (injected)) while recovering (optimizer step 3)"
        + resume_line(session)
    )
    assert RecoveryFolder(session).saved_step() == 2
    assert cli_main(["--resume", str(session), "--headless"]) == 0
    want, got = adapter(whole), adapter(session)
    assert want.keys() == got.keys() and len(want) > 0
    for name in want:
        assert torch.equal(want[name], got[name]), name


def recovery_started_on(device: str, session: Path, data: Path) -> None:
    """A session whose recovery started on ``device`` (the model is loaded here on the CPU:
    only the recovery's saved settings name ``device``)."""
    source = RecoverySource("session", session)
    model, tokenizer, _ = source.load()
    recovery = settings(data, steps=2, eval_every=2, save_every=2, warmup=1)
    prepare_recovery(model, tokenizer, recovery, RecoveryFolder(session), lambda e: None,
            source.loaded_as(None, device))  # fmt: skip


@pytest.mark.parametrize(
    ("option", "loaded_by"),
    [([], None), (["--device", "cpu"], "cpu"), (["--device-map", "auto"], "auto")],
    ids=["where-it-started", "device", "device-map"],
)
def test_resume_of_a_recovery_loads_on_the_device_given(
    option, loaded_by, tiny_model_dir, recovery_text, tmp_path, capsys, monkeypatch
):
    session = make_session(tmp_path / "session", tiny_model_dir("llama"))
    recovery_started_on("cuda:3", session, recovery_text)  # the GPU that failed
    device_maps = []
    load = transformers.AutoModelForCausalLM.from_pretrained

    def recorded(*args, **kwargs):
        device_maps.append(kwargs["device_map"])
        return load(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", recorded)
    status = cli_main(["--resume", str(session), "--headless", *option])
    err = capsys.readouterr().err
    if loaded_by is None:  # by default, where it started: that GPU is gone
        assert status == 2 and device_maps == []
        assert (
            one_error_line(err)
            == "mptui: error: --device cuda:3 asked for a GPU but torch sees none"
        )
        return
    assert status == 0, err
    assert device_maps == [loaded_by] and RecoveryFolder(session).saved_step() == 2
