"""The app's keys for leaving: attached to a served run they detach or (asked) stop it; in one
process ctrl+d does nothing and q quits as before."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app_replay import NoGpu, Publisher, fixed_run_events
from conftest import weights_file

from mptui.app.app import MptuiApp
from mptui.app.screens import ExportScreen
from mptui.engine.api import (
    CalibrationSpec,
    Engine,
    EngineServer,
    EngineState,
    PruneSettings,
    RunRequest,
    attach,
)
from mptui.engine.api import commands as cmd
from mptui.engine.api import events as ev


async def settle(pilot, condition, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError("timed out")


def actions(app: MptuiApp) -> set[str]:
    return {active.binding.action for active in app.active_bindings.values()}


async def test_in_one_process_ctrl_d_does_nothing_and_q_asks_to_quit():
    app = MptuiApp(replay=fixed_run_events(), gpu_reader=NoGpu())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("ctrl+d")
        await pilot.pause()
        assert app.is_running and "attached" not in str(app.status.render())
        assert "detach" not in actions(app)  # nor in the footer
        await pilot.press("q")
        assert type(app.screen).__name__ == "QuitScreen"


async def test_attached_q_asks_and_s_stops_the_run_then_the_app_says_it_ended(tmp_path):
    engine = Publisher()
    server = EngineServer(engine, tmp_path)
    server.start()
    for event in fixed_run_events():
        engine.emit(event)
    remote = attach(str(tmp_path))
    app = MptuiApp(remote, gpu_reader=NoGpu(), attached_to=remote.peer)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, lambda: app.state.step == 4)  # the snapshot arrived
            assert f"attached to {remote.peer}" in str(app.status.render())
            assert "detach" in actions(app)
            await pilot.press("q")
            assert type(app.screen).__name__ == "DetachScreen"
            await pilot.press("s")
            await asyncio.get_running_loop().run_in_executor(None, engine.got_command.wait, 5)
            assert engine.received == [cmd.Stop()] and app.is_running
            engine.emit(ev.StateChanged("stopped"))
            engine.emit(ev.Finished("stopped", {}))
            server.close()
            await settle(pilot, lambda: "the run has ended (stopped)" in app.state.link)
            assert app.state.state_label == "STOPPED" and remote.state is EngineState.STOPPED
            await pilot.press("q")  # nothing left to stop: q leaves at once
            await settle(pilot, lambda: not app.is_running)
    finally:
        server.close()
        remote.close()


async def test_attached_ctrl_d_detaches_and_the_run_hears_nothing(tmp_path):
    engine = Publisher()
    server = EngineServer(engine, tmp_path)
    server.start()
    remote = attach(str(tmp_path))
    app = MptuiApp(remote, gpu_reader=NoGpu(), attached_to=remote.peer)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("ctrl+d")
            await settle(pilot, lambda: not app.is_running)
        assert engine.received == []
    finally:
        server.close()
        remote.close()


def served_run(model: Path, calibration_file: Path, folder: Path):
    """A tiny run served from ``folder`` as ``mptui --workers N`` serves one (its engine lingers
    after the search), started, and a client attached: ``(engine, server, remote)``."""
    settings = PruneSettings.with_distribution(
        0.2, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32), mlp_group=40
    )
    engine = Engine(RunRequest(str(model), settings), linger=True)
    server = EngineServer(engine, folder, linger=True, export_dir=folder / "export")
    server.start()
    engine.start()
    return engine, server, attach(str(folder))


async def test_attached_when_the_search_ends_the_app_exports_and_q_ends_the_run(
    tiny_model_dir, calibration_file, tmp_path
):
    """A served run on a real engine (what ``mptui --workers N`` opens the app on) stays after
    its search while attached: x exports as in one process, and leaving ends the run."""
    engine, server, remote = served_run(tiny_model_dir("llama"), calibration_file, tmp_path)
    export_dir = Path(remote.welcome.export_dir)  # what mptui attach opens the app with
    app = MptuiApp(remote, gpu_reader=NoGpu(), attached_to=remote.peer, export_dir=export_dir)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, lambda: app.state.finished == "done", timeout=120)
            assert "the search has ended (done); x exports" in app.state.link
            await pilot.press("x")
            await settle(pilot, lambda: isinstance(app.screen, ExportScreen))
            await pilot.press("enter")
            await settle(pilot, lambda: app.state.exported is not None, timeout=60)
            assert app.state.exported.params == engine.session.params
            assert weights_file(tmp_path / "export").is_file()
            assert engine.join(timeout=0.5) is False  # still there for us
            await pilot.press("q")  # the search is over: no question, leave
            await settle(pilot, lambda: not app.is_running)
        remote.close()  # as mptui attach does once the app is gone
        assert engine.join(timeout=30) and engine.result.reason == "done"
    finally:
        remote.close()
        server.close()
