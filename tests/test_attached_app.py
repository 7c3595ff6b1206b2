"""The app's keys for leaving: attached to a served run they detach or (asked) stop it; in one
process ctrl+d does nothing and q quits as before."""

from __future__ import annotations

import asyncio

from app_replay import NoGpu, fixed_run_events
from test_serve import Publisher

from mptui.app.app import MptuiApp
from mptui.engine.api import EngineServer, EngineState, attach
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
