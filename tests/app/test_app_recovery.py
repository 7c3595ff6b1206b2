"""Recovery in the app: r after the search, the Recovery pane and status line, pause, and
export and evaluate while paused, which merge on a copy and leave training where it was."""

from __future__ import annotations

import threading
import time

import pytest
from test_app import TIMEOUT, NoGpu, wait_until
from textual.widgets import DataTable, Input

from mptui.app.app import MptuiApp
from mptui.app.screens import EvaluationScreen, ExportScreen
from mptui.engine.api import (
    CalibrationSpec,
    Engine,
    EvalRequest,
    PruneSettings,
    RecoverySettings,
    RunRequest,
    SessionFolder,
    SessionRecorder,
    commands,
    recovery_events,
)
from mptui.engine.api import events as ev
from mptui.engine.session import files as session_files


def wait_for(predicate, timeout: float = 120) -> None:
    """Poll ``predicate`` until it holds; fail (never hang) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class HoldAtStep:
    """A subscriber (it runs on the engine thread) that holds training once the recovery has
    taken ``step`` optimizer steps, until :meth:`release`. A key pressed meanwhile reaches the
    engine while training is under way, however slowly the app answers: on a busy machine the
    pilot's ``press`` alone takes seconds (it waits for the process to go idle, which it never
    does while training), and a tiny recovery could end before a key pressed after it arrives."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.reached = threading.Event()  # set once training is held: a key sent now lands there
        self._released = threading.Event()

    def __call__(self, event) -> None:
        if isinstance(event, recovery_events.RecoveryStep) and event.step == self.step:
            self.reached.set()
            self._released.wait(TIMEOUT)  # never for good: a failed test lets the engine go

    def release(self) -> None:
        self._released.set()


def recording_sends(engine: Engine) -> list:
    """Every command sent to ``engine`` from now on, in order (the app's keys included)."""
    sent: list = []
    send = engine.send

    def record(command) -> None:
        sent.append(command)
        send(command)

    engine.send = record
    return sent


def refused(events: list) -> list:
    """The engine's answers to a command that recovery does not take."""
    return [e for e in events if isinstance(e, ev.Notice) and e.message.startswith("recovering:")]


async def test_recover_pause_evaluate_and_export_in_the_app(
    tiny_model_dir, calibration_file, tmp_path
):
    prune = PruneSettings.with_distribution(
        0.2, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32), mlp_group=40
    )
    request = RunRequest(str(tiny_model_dir("llama")), prune, cache_dir=tmp_path)
    (tmp_path / "session").mkdir()
    engine = Engine(request, linger=True, session_dir=tmp_path / "session")
    engine.subscribe(SessionRecorder(SessionFolder(tmp_path / "session"), engine.plan))
    recovery = RecoverySettings(
        data=str(calibration_file), steps=80, batch_size=2, grad_accum=1, seqlen=32,
        eval_every=20, save_every=20, val_examples=4, lr=1e-3,
    )  # fmt: skip
    app = MptuiApp(
        engine, gpu_reader=NoGpu(), user_theme_dir=tmp_path / "themes", recovery=recovery,
        eval_request=EvalRequest(text=str(calibration_file), seqlen=32),
        export_dir=tmp_path / "export",
    )  # fmt: skip
    status = lambda: str(app.query_one("#status").render())  # noqa: E731
    seen: list = []
    engine.subscribe(seen.append)
    hold = HoldAtStep(20)
    engine.subscribe(hold)
    sent = recording_sends(engine)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.state.finished == "done")
        await pilot.press("r")
        await wait_until(pilot, lambda: hold.reached.is_set() and "RECOVERING step" in status())
        await pilot.press("space")
        await wait_until(pilot, lambda: any(isinstance(c, commands.Pause) for c in sent))
        hold.release()  # the Pause waits in the queue: training stops before step 21
        await wait_until(pilot, lambda: app.state.state == "recovery_paused")
        step = engine.recovery.step
        assert step == 20 and app.query_one("#recovery").display
        # paused within one optimizer step, and held: two commands that paused training only
        # answers with a notice, the second sent once the first is answered (training that went
        # on after the first would take a step before it reads the second)
        for answered in (1, 2):
            engine.send(commands.Override("no-such-structure"))
            await wait_until(pilot, lambda n=answered: len(refused(seen)) == n)
        assert engine.recovery.step == step
        await pilot.press("e")
        await wait_until(
            pilot, lambda: isinstance(app.screen, EvaluationScreen) and app.screen.query(DataTable)
        )
        table = app.screen.query_one("#evaluation", DataTable)
        what, dense, pruned, recovered, change = table.get_row_at(0)
        assert what == "perplexity" and float(recovered) < float(pruned)
        assert float(change) == pytest.approx(float(recovered) - float(dense), rel=1e-3)
        summary = (tmp_path / "session" / session_files.SUMMARY_MD).read_text()
        assert "| metric | dense | pruned | recovered |" in summary
        await pilot.press("escape")
        await pilot.press("x")
        await wait_until(
            pilot, lambda: isinstance(app.screen, ExportScreen) and app.screen.query(Input)
        )
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.state.exported is not None)
        assert app.state.exported.params == engine.pruning.params
        assert "recovered by LoRA" in (tmp_path / "export" / "README.md").read_text()
        assert engine.recovery.step == step and app.state.state == "recovery_paused"
        await pilot.press("space")
        await wait_until(pilot, lambda: app.state.recovery.finished == "done")
        assert engine.recovery.step == 80
        assert "val ppl" in str(app.query_one("#recovery").border_subtitle)


def test_a_stopped_recovery_continues_when_the_session_is_resumed(
    tiny_model_dir, calibration_file, tmp_path
):
    """Through the engine, as the app and ``mptui --resume`` drive it: Stop saves within one
    optimizer step; an engine built with ``recover=`` goes straight back to the recovery."""
    import dataclasses

    from mptui.engine.api import commands, recovery_events

    prune = PruneSettings.with_distribution(
        0.2, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32), mlp_group=40
    )
    request = RunRequest(str(tiny_model_dir("llama")), prune, cache_dir=tmp_path)
    recovery = RecoverySettings(
        data=str(calibration_file), steps=40, batch_size=2, grad_accum=1, seqlen=32,
        eval_every=40, save_every=40, val_examples=4,
    )  # fmt: skip
    events: list = []
    engine = Engine(request, [events.append], linger=True, session_dir=tmp_path)
    engine.start()
    wait_for(lambda: engine.result is not None)
    engine.send(commands.Recover(recovery))
    wait_for(lambda: any(isinstance(e, recovery_events.RecoveryStep) for e in events))
    engine.send(commands.Stop())
    assert engine.join(60)
    stopped = next(e for e in events if isinstance(e, recovery_events.RecoveryFinished))
    assert stopped.reason == "stopped" and 0 < stopped.step < 40
    resumed = dataclasses.replace(request, resume_steps=tuple(engine.pruning.steps))
    again: list = []
    second = Engine(resumed, [again.append], session_dir=tmp_path, recover=recovery)
    assert second.run().reason == "done"
    started = next(e for e in again if isinstance(e, recovery_events.RecoveryStarted))
    assert started.step == stopped.step  # saved at the stop, continued from there
    losses = [r["step"] for r in started.history if "loss" in r]
    assert losses == list(range(1, stopped.step + 1))  # the pane's curve so far
    assert not any(type(e).__name__ == "StepCommitted" for e in again)  # no further search
    assert second.recovery.step == 40


async def test_an_export_opened_with_recover_goes_straight_to_the_recovery(
    tiny_model_dir, calibration_file, tmp_path
):
    from mptui.engine.api import RecoverySource, export_model
    from tests.engine.test_recovery import make_session

    session = make_session(tmp_path / "pruned", tiny_model_dir("llama"))
    pruned, tokenizer, plan = RecoverySource("session", session).load()
    export_model(pruned, tokenizer, plan, tmp_path / "export")
    prune = PruneSettings.with_distribution(
        0.2, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32)
    )
    recovery = RecoverySettings(
        data=str(calibration_file), steps=5, batch_size=2, grad_accum=1, seqlen=32,
        eval_every=5, save_every=5, val_examples=4,
    )  # fmt: skip
    request = RunRequest(str(tmp_path / "export"), prune, cache_dir=tmp_path)
    engine = Engine(request, linger=True, session_dir=tmp_path / "state", recover=recovery)
    app = MptuiApp(engine, gpu_reader=NoGpu(), user_theme_dir=tmp_path / "themes")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.state.recovery and app.state.recovery.finished)
        assert app.state.recovery.finished == "done" and app.state.steps == []
    saved = tmp_path / "state" / session_files.RECOVERY / session_files.RECOVERY_CHECKPOINT
    assert saved.is_file()


def test_a_recovery_that_fails_says_so_and_the_engine_keeps_answering(
    tiny_model_dir, calibration_file, tmp_path
):
    import torch

    from mptui.engine.api import commands, events

    prune = PruneSettings.with_distribution(
        0.2, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32), mlp_group=40
    )
    request = RunRequest(str(tiny_model_dir("llama")), prune, cache_dir=tmp_path)
    seen: list = []
    engine = Engine(request, [seen.append], linger=True, session_dir=tmp_path)
    engine.start()
    wait_for(lambda: engine.result is not None)

    def out_of_memory(module, args, kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    engine.pruning.model.register_forward_pre_hook(out_of_memory, with_kwargs=True)  # copied
    engine.send(commands.Recover(RecoverySettings(data=str(calibration_file), batch_size=1,
                                                  seqlen=32, val_examples=4)))  # fmt: skip
    wait_for(lambda: any(isinstance(e, events.Error) for e in seen))
    error = next(e for e in seen if isinstance(e, events.Error))
    assert error.message.startswith("recovery failed: out of memory with one example")
    assert engine.state.value == "error" and not engine.join(0.2)  # still answering
    engine.send(commands.Stop())
    assert engine.join(30)
