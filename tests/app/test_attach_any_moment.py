"""A second app attaching to a served run at any moment (mid-search, paused, waiting on a
proposal, mid-export, mid-evaluation, mid-recovery) shows what an app that saw every event
shows, and keeps showing it as the run goes on."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from app_replay import NoGpu, fixed_run_events, served_publisher
from test_app_recovery import HoldAtStep
from test_attached_app import settle

from mptui.app.app import MptuiApp
from mptui.app.state import RunState
from mptui.engine.api import (
    ActivityKind,
    CalibrationSpec,
    Engine,
    EngineServer,
    EngineState,
    PlanStep,
    PruneSettings,
    RecoverySettings,
    RunRequest,
    Structure,
    attach,
)
from mptui.engine.api import commands as cmd
from mptui.engine.api import events as ev
from mptui.engine.api import recovery_events as rev


def searching() -> list[ev.Event]:
    """A short guided run, mid-way through step 4 (four candidates scored)."""
    return [ev.GuidedChanged(True), *fixed_run_events()]


def search_done() -> list[ev.Event]:
    return [
        *searching(),
        ev.Proposal(4, "L1.mlp-46", 46.2),
        ev.StateChanged(EngineState.WAITING),
        ev.StepCommitted(
            PlanStep(4, Structure("mlp_channels", 1, 46, 466), 46.2, 0, 0.15, "engine"),
            46.2, 0.15, 0.18, 0, 1.5, 7, 131072,
        ),
        ev.StateChanged(EngineState.RUNNING),
        ev.DimensionChanged(None, None, ("blocks", "mlp_channels", "attn_heads")),
        ev.StateChanged(EngineState.DONE),
        ev.Finished("done", {}),
    ]  # fmt: skip


def recovering() -> list[ev.Event]:
    return [
        *search_done(),
        ev.StateChanged(EngineState.RECOVERING),
        rev.RecoveryStarted(0, 40, 1024, 3_000_000, 64, 4, {"steps": 40}),
        rev.RecoveryValidated(0, 52.0),
        rev.RecoveryStep(1, 40, 3.9, 1e-4, 900.0, 39.0, 2, 1),
        rev.RecoveryStep(2, 40, 3.7, 2e-4, 910.0, 38.0, 2, 1),
    ]


EXPORT = "exporting to /tmp/x"
EVALUATION = "evaluating the pruned model"

#: name: (what the run did before the app attaches, what it does after)
MOMENTS = {
    "mid-search": (
        searching(),
        [
            ev.CandidateScored(4, "mlp_channels", "L5.mlp-46", 46.0, 0.4, 70_656, 5, 7),
            ev.Progress(4, 5, 7, 52_000.0, 9.0),
            ev.GuidedChanged(False),
        ],
    ),
    "paused": (
        [*searching(), ev.StateChanged(EngineState.PAUSED)],
        [ev.StateChanged(EngineState.RUNNING), ev.Progress(4, 5, 7, 52_000.0, 9.0)],
    ),
    "waiting": (
        [*searching(), ev.Proposal(4, "L1.mlp-46", 46.2), ev.StateChanged(EngineState.WAITING)],
        [ev.StateChanged(EngineState.PAUSED)],
    ),
    "mid-export": (
        [*searching(), ev.Activity(ActivityKind.EXPORT, EXPORT, 5, 10)],
        [ev.Activity(ActivityKind.EXPORT, EXPORT, 10, 10), ev.Activity(None)],
    ),
    "mid-evaluation": (
        [*searching(), ev.Activity(ActivityKind.EVALUATION, EVALUATION, 3, 10)],
        [ev.Activity(ActivityKind.EVALUATION, EVALUATION, 7, 10)],
    ),
    "mid-recovery": (
        recovering(),
        [
            rev.RecoveryStep(3, 40, 3.6, 3e-4, 920.0, 37.0, 2, 1),
            rev.RecoveryValidated(3, 40.0),
            ev.StateChanged(EngineState.RECOVERY_PAUSED),
        ],
    ),
}


def shown(state: RunState) -> dict:
    """What the screen is drawn from, but the link line (whom the app is attached to)."""
    fields = dataclasses.asdict(state)
    fields.pop("link")
    fields.pop("candidates_step")  # bookkeeping: which step the table belongs to
    fields["memory"] = list(state.memory)
    return fields


def seen_all(events: list[ev.Event]) -> RunState:
    """The state of an app that saw every event."""
    state = RunState()
    for event in events:
        state.apply(event)
    return state


@pytest.mark.parametrize("moment", MOMENTS)
async def test_an_app_attaching_at_any_moment_shows_what_a_witness_shows(moment, tmp_path):
    before, after = MOMENTS[moment]
    engine, server, remote = served_publisher(tmp_path, before)
    app = MptuiApp(remote, gpu_reader=NoGpu(), attached_to=remote.peer)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            for events in (before, before + after):
                witness = shown(seen_all(events))
                try:
                    await settle(pilot, lambda w=witness: shown(app.state) == w, timeout=5)
                except AssertionError:
                    assert shown(app.state) == witness  # pytest shows the difference
                if events is before:
                    for event in after:
                        engine.emit(event)
    finally:
        server.close()
        remote.close()


async def test_an_attached_app_toggles_guided_mode_from_what_the_run_said(tmp_path):
    """The g key turns off what the engine last said was on; the app keeps no flag of its own."""
    engine, server, remote = served_publisher(tmp_path, searching())  # guided
    app = MptuiApp(remote, gpu_reader=NoGpu(), attached_to=remote.peer)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, lambda: app.state.guided)
            await pilot.press("g")
            await asyncio.get_running_loop().run_in_executor(None, engine.got_command.wait, 5)
            assert engine.received == [cmd.SetGuided(False)]
    finally:
        server.close()
        remote.close()


async def test_an_app_attaching_to_a_real_run_mid_recovery_shows_what_a_witness_shows(
    tiny_model_dir, calibration_file, tmp_path
):
    """End to end on a real engine: the search, then a recovery paused mid-way; an app attached
    then shows what a subscriber that saw every event folds, and goes on doing so on Resume."""
    settings = PruneSettings.with_distribution(
        0.2, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32), mlp_group=40
    )
    request = RunRequest(str(tiny_model_dir("llama")), settings, cache_dir=tmp_path)
    seen: list[ev.Event] = []
    hold = HoldAtStep(2)  # the Pause below lands mid-recovery, however slow this machine is
    engine = Engine(request, [seen.append, hold], linger=True, session_dir=tmp_path)
    server = EngineServer(engine, tmp_path, linger=True)
    server.start()
    watcher = attach(str(tmp_path))  # a client from the start keeps the run after its search
    watcher.start()
    engine.start()
    recovery = RecoverySettings(
        data=str(calibration_file), steps=6, batch_size=2, grad_accum=1, seqlen=32,
        eval_every=3, save_every=100, val_examples=4,
    )  # fmt: skip
    remote = None
    try:
        await wait_for(lambda: engine.result is not None)
        engine.send(cmd.Recover(recovery))
        await wait_for(hold.reached.is_set)
        engine.send(cmd.Pause())
        hold.release()
        await wait_for(lambda: engine.state is EngineState.RECOVERY_PAUSED)
        assert [e.step for e in seen if isinstance(e, rev.RecoveryStep)] == [1, 2]
        remote = attach(str(tmp_path))
        app = MptuiApp(remote, gpu_reader=NoGpu(), attached_to=remote.peer)
        async with app.run_test(size=(120, 40)) as pilot:
            for moment in ("paused mid-recovery", "recovered"):
                witness = shown(seen_all(list(seen)))
                try:
                    await settle(pilot, lambda w=witness: shown(app.state) == w, timeout=10)
                except AssertionError:
                    assert shown(app.state) == witness, moment
                if moment == "paused mid-recovery":
                    assert "PAUSED recovery step" in app.state.state_label
                    await pilot.press("space")
                    await settle(pilot, lambda: engine.state is EngineState.DONE, timeout=120)
            assert app.state.recovery.finished == "done"
            await pilot.press("q")  # the search is over: leave, and the run ends
            await settle(pilot, lambda: not app.is_running)
        remote.close()
        watcher.close()
        assert engine.join(timeout=30)
    finally:
        watcher.close()
        if remote is not None:
            remote.close()
        engine.send(cmd.Stop())
        engine.join(timeout=30)
        server.close()


async def wait_for(condition, timeout: float = 120) -> None:
    """Wait on ``condition`` without blocking the event loop; fail (never hang) after
    ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)
