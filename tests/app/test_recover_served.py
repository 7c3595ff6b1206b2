"""A headless recovery is the engine's, so it is served like a search: ``mptui attach`` shows it
and steers it, and ``mptui --resume`` continues it through the same driver."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from app_replay import NoGpu
from conftest import weights_file
from test_app_export import open_export, path_field
from test_attach_any_moment import wait_for
from test_attached_app import served_run

from mptui.app.app import MptuiApp
from mptui.engine.api import EngineState, RecoverySettings, RunView, attach, commands
from mptui.engine.recovery.folder import RecoveryFolder
from tests.engine.test_recovery import make_session

#: A recovery far longer than the test: it ends by the attached app's stop.
OPTIONS = ["--steps", "100000", "--batch-size", "2", "--grad-accum", "1", "--seqlen", "32",
           "--eval-every", "100000", "--save-every", "100000", "--warmup", "2"]  # fmt: skip


class Lines:
    """A process's stdout, line by line, read in a thread so a test can wait for a line."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 120) -> str:
        for line in self.seen:
            if text in line:
                return line
        while True:
            line = self._queue.get(timeout=timeout)
            self.seen.append(line)
            if text in line:
                return line


def start_recovery(session: Path, data: Path, *extra: str) -> tuple[subprocess.Popen, Lines]:
    command = [sys.executable, "-m", "mptui", "recover", str(session), "--data", str(data),
               *OPTIONS, *extra]  # fmt: skip
    process = subprocess.Popen(
        command, env=os.environ | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return process, Lines(process)


async def test_an_app_attached_to_a_headless_recovery_pauses_exports_and_stops_it(
    tiny_model_dir, tmp_path
):
    session = make_session(tmp_path / "session", tiny_model_dir("llama"))
    process, lines = start_recovery(session, session / "calibration.txt")
    try:
        lines.wait_for("attach with: mptui attach")
        lines.wait_for("recovering 100000 steps")
        remote = attach(str(session))
        app = MptuiApp(remote, gpu_reader=NoGpu(), attached_to=remote.peer)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(lambda: app.state.recovery is not None and app.state.recovery.step > 0)
            assert app.state.state_label.startswith("RECOVERING step ")
            assert app.recovery.display and not app.candidates.display
            await pilot.press("space")
            await wait_for(lambda: app.state.state == EngineState.RECOVERY_PAUSED)
            paused_at = app.state.recovery.step
            screen = await open_export(pilot, app)
            path_field(screen).value = str(tmp_path / "recovered")
            await pilot.press("enter")
            await wait_for(lambda: (tmp_path / "recovered" / "config.json").is_file())
            await wait_for(lambda: app.state.exported is not None)
            assert weights_file(tmp_path / "recovered").is_file()
            assert app.state.recovery.step == paused_at  # the export kept it paused
            await pilot.press("space")
            await wait_for(lambda: remote.state is EngineState.RECOVERING)
            await pilot.press("q")
            await wait_for(lambda: type(app.screen).__name__ == "DetachScreen")
            await pilot.press("s")
            await wait_for(lambda: remote.finished is not None)
        remote.close()
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    stopped = lines.wait_for("stopped at step")
    saved = RecoveryFolder(session).saved_step()
    assert saved > paused_at
    assert stopped == (
        f"stopped at step {saved} of 100000 (saved); continue with mptui --resume {session}"
    )


def test_a_resumed_recovery_is_served_too_and_a_client_stop_saves_it(tiny_model_dir, tmp_path):
    """``mptui --resume`` of a started recovery runs through the same engine: served, and
    continuing from the save."""
    session = make_session(tmp_path / "session", tiny_model_dir("llama"))
    _, first_save = stop_through_a_client(*start_recovery(session, session / "calibration.txt"))
    command = [sys.executable, "-m", "mptui", "--resume", str(session), "--headless"]
    process = subprocess.Popen(
        command, env=os.environ | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    started, saved = stop_through_a_client(process, Lines(process))
    assert started.startswith(f"recovering 100000 steps from step {first_save}:")
    assert saved > first_save


def stop_through_a_client(process: subprocess.Popen, lines: Lines) -> tuple[str, int]:
    """Attach once the recovery trains, stop it from the client; the recovery's first line and
    the step it saved at its stop."""
    try:
        started = lines.wait_for("recovering 100000 steps")
        session = Path(lines.wait_for("session ").removeprefix("session "))
        remote = attach(str(session))
        view = RunView()
        remote.subscribe(view.apply)
        remote.start()
        wait_until(lambda: view.recovery is not None and view.recovery.step > 0)
        assert remote.state is EngineState.RECOVERING
        remote.send(commands.Stop())
        wait_until(lambda: remote.finished is not None)
        remote.close()
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    saved = RecoveryFolder(session).saved_step()
    assert lines.wait_for("stopped at step").startswith(f"stopped at step {saved} of 100000")
    return started, saved


def wait_until(condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


async def test_r_in_an_app_attached_to_a_served_search_starts_the_recovery_it_was_given(
    tiny_model_dir, calibration_file, tmp_path
):
    """The recovery a run was started with (``--recover-data``) reaches an attached app in the
    welcome, so its ``r`` recovers as in one process."""
    recovery = RecoverySettings(data=str(calibration_file), steps=3, batch_size=2, grad_accum=1,
                                seqlen=32, eval_every=3, save_every=3, warmup=1)  # fmt: skip
    engine, server, remote = served_run(
        tiny_model_dir("llama"), calibration_file, tmp_path, recovery=recovery
    )
    assert remote.welcome.recovery == recovery
    app = MptuiApp(
        remote, gpu_reader=NoGpu(), attached_to=remote.peer, recovery=remote.welcome.recovery
    )
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(lambda: app.state.finished == "done")
            await pilot.press("r")
            await wait_for(lambda: app.state.recovery is not None)
            await wait_for(lambda: app.state.recovery.finished == "done")
            assert RecoveryFolder(tmp_path).saved_step() == 3
            await pilot.press("q")
            await wait_for(lambda: not app.is_running)
        remote.close()
        assert engine.join(timeout=30) and engine.result.reason == "done"
    finally:
        remote.close()
        server.close()
