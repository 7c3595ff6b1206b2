"""The app's keys for leaving: attached to a served run they detach or (asked) stop it; in one
process ctrl+d does nothing and q quits as before."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from app_replay import NoGpu, fixed_run_events, served_publisher
from conftest import weights_file
from test_app_faults import notices

from mptui.app.app import MptuiApp
from mptui.app.screens import DetachScreen, ExportScreen
from mptui.engine.api import (
    CalibrationSpec,
    Engine,
    EngineServer,
    EngineState,
    PruneSettings,
    RecoverySettings,
    RunRequest,
    attach,
)
from mptui.engine.api import commands as cmd
from mptui.engine.api import events as ev
from mptui.engine.api import recovery_events as rev


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
    engine, server, remote = served_publisher(tmp_path, fixed_run_events())
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
            engine.emit(ev.StateChanged("ended"))  # a real engine's last event
            server.close()
            await settle(pilot, lambda: "the run has ended (stopped)" in app.state.link)
            assert app.state.state_label == "STOPPED" and remote.state is EngineState.ENDED
            await pilot.press("space")  # nothing reads a command now: the app says so itself
            await settle(pilot, lambda: "the run has ended; q leaves" in notices(app))
            await pilot.press("q")  # nothing left to stop: q leaves at once
            await settle(pilot, lambda: not app.is_running)
    finally:
        server.close()
        remote.close()


async def test_attached_ctrl_d_detaches_and_the_run_hears_nothing(tmp_path):
    engine, server, remote = served_publisher(tmp_path)
    app = MptuiApp(remote, gpu_reader=NoGpu(), attached_to=remote.peer)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("ctrl+d")
            await settle(pilot, lambda: not app.is_running)
        assert engine.received == []
    finally:
        server.close()
        remote.close()


def served_run(
    model: Path,
    calibration_file: Path,
    folder: Path,
    *,
    paused: bool = False,
    on_client: Callable[[str], None] | None = None,
    recovery: RecoverySettings | None = None,
):
    """A tiny run served from ``folder`` as ``mptui --workers N`` serves one (its engine lingers
    after the search), started, and a client attached: ``(engine, server, remote)``.
    ``paused``: a Pause is queued before the engine starts (it pauses once loaded, before its
    first candidate); ``on_client`` is the server's; ``recovery``: what its clients' ``r``
    recovers with (the session's settings keep it for the server)."""
    settings = PruneSettings.with_distribution(
        0.2, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32), mlp_group=40
    )
    engine = Engine(RunRequest(str(model), settings), linger=True, session_dir=folder)
    server = EngineServer(
        engine, folder, linger=True, export_dir=folder / "export", on_client=on_client,
        recovery=recovery,
    )  # fmt: skip
    server.start()
    if paused:
        engine.send(cmd.Pause())
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
            assert app.state.exported.params == engine.pruning.params
            assert weights_file(tmp_path / "export").is_file()
            assert engine.join(timeout=0.5) is False  # still there for us
            await pilot.press("q")  # the search is over: no question, leave
            await settle(pilot, lambda: not app.is_running)
        remote.close()  # as mptui attach does once the app is gone
        assert engine.join(timeout=30) and engine.result.reason == "done"
    finally:
        remote.close()
        server.close()


PAUSED = {
    "search": (
        [*fixed_run_events(), ev.StateChanged(EngineState.PAUSED)],
        "Detach? The run is paused at step 4: it stays paused after you detach.",
    ),
    "recovery after the search": (
        [
            *fixed_run_events(),
            ev.StateChanged(EngineState.DONE),
            ev.Finished("done", {}),
            ev.StateChanged(EngineState.RECOVERING),
            rev.RecoveryStarted(0, 40, 1024, 3_000_000, 64, 4, {"steps": 40}),
            rev.RecoveryStep(3, 40, 3.6, 3e-4, 920.0, 37.0, 2, 1),
            ev.StateChanged(EngineState.RECOVERY_PAUSED),
        ],
        "Detach? The recovery is paused at step 3/40: it stays paused after you detach.",
    ),
}


@pytest.mark.parametrize("what", PAUSED)
async def test_attached_the_detach_dialog_names_what_is_paused(what, tmp_path):
    """The step (the recovery's step) is named; a paused recovery asks though the search is
    over (q would leave at once otherwise). n stays and sends nothing; r sends Resume."""
    events, question = PAUSED[what]
    engine, server, remote = served_publisher(tmp_path, events)
    app = MptuiApp(remote, gpu_reader=NoGpu(), attached_to=remote.peer)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, lambda: app.state.paused)  # the snapshot arrived
            await pilot.press("q")
            assert detach_question(app).startswith(question)
            await pilot.press("n")
            assert not isinstance(app.screen, DetachScreen) and engine.received == []
            await pilot.press("q", "r")
            await asyncio.get_running_loop().run_in_executor(None, engine.got_command.wait, 5)
            assert engine.received == [cmd.Resume()]
            await settle(pilot, lambda: not app.is_running)
    finally:
        server.close()
        remote.close()


class ClientLines:
    """The server's lines about its clients (its ``on_client``), and a wait for one of them."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()

    async def wait_for(self, line: str) -> None:
        """Until the server has told ``line`` (a guard of a minute against a hang)."""

        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(lambda: line in self.lines, timeout=60)

        assert await asyncio.get_running_loop().run_in_executor(None, wait), self.lines


def detach_question(app: MptuiApp) -> str:
    """The detach dialog's text, as shown."""
    assert isinstance(app.screen, DetachScreen)
    return str(app.screen.query_one("#detach-text").render())


async def test_attached_q_on_a_paused_run_says_so_and_r_resumes_it_then_detaches(
    tiny_model_dir, calibration_file, tmp_path
):
    """Leaving a paused run (paused before its first step: no step to name) says so and offers
    to resume it: r sends Resume, then detaches. Another client sees the run running again, and
    it goes on to its end."""
    told = ClientLines()
    engine, server, remote = served_run(
        tiny_model_dir("llama"), calibration_file, tmp_path, paused=True, on_client=told
    )
    app = MptuiApp(remote, gpu_reader=NoGpu(), attached_to=remote.peer)
    running_again = threading.Event()

    def watch(event: ev.Event) -> None:
        if isinstance(event, ev.StateChanged) and event.state == EngineState.RUNNING:
            running_again.set()

    watcher = None
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, lambda: app.state.paused, timeout=120)
            watcher = attach(str(tmp_path))  # its snapshot says paused; then what comes live
            watcher.subscribe(watch)
            watcher.start()
            await pilot.press("q")
            assert detach_question(app) == (
                "Detach? The run is paused: it stays paused after you detach.  "
                "r resume and detach   y detach, leave it paused   s stop the run   n stay"
            )
            await pilot.press("r")
            await settle(pilot, lambda: not app.is_running)
        assert app.return_value is None  # nothing was left paused
        remote.close()  # as mptui attach does once the app is gone
        await told.wait_for("client 1 detached")
        assert told.lines == [
            "client 1 (unix socket) attached",
            "client 2 (unix socket) attached",  # the watcher
            "client 1 resumed the run",
            "client 1 detached",
        ]
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, running_again.wait, 60)
        watcher.close()  # the last client: the run ends once its search is over
        assert await loop.run_in_executor(None, engine.join, 120)
        assert engine.result.reason == "done"
    finally:
        remote.close()
        if watcher is not None:
            watcher.close()
        engine.send(cmd.Stop())
        server.close()


async def test_attached_ctrl_d_on_a_paused_run_asks_and_y_leaves_it_paused(
    tiny_model_dir, calibration_file, tmp_path
):
    """ctrl+d on a paused run asks, as q does, rather than leave it paused unsaid; y detaches
    and sends nothing: the run stays paused."""
    told = ClientLines()
    engine, server, remote = served_run(
        tiny_model_dir("llama"), calibration_file, tmp_path, paused=True, on_client=told
    )
    app = MptuiApp(remote, gpu_reader=NoGpu(), attached_to=remote.peer)
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await settle(pilot, lambda: app.state.paused, timeout=120)
            await pilot.press("ctrl+d")
            assert "The run is paused: it stays paused" in detach_question(app)
            await pilot.press("y")
            await settle(pilot, lambda: not app.is_running)
        assert app.return_value == "the run is paused"  # for mptui attach's last line
        remote.close()
        await told.wait_for("client 1 detached")
        assert told.lines == ["client 1 (unix socket) attached", "client 1 detached"]
        assert engine.state is EngineState.PAUSED and engine.join(timeout=0) is False
    finally:
        remote.close()
        engine.send(cmd.Stop())
        server.close()
