"""The app on a shared box (issue 23). An export that finds the disk full is a notice, and the
search goes on to its end. A full disk at the journal, or a lost device at a candidate or in an
evaluation or export after the search, ends the run: the app shows the one line with the
``mptui --resume`` hint (a notice and the status line), the state is ERROR, nothing crashes,
and the journal holds the committed steps (the headless side is tests/engine/test_faults_*)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import weights_file
from test_app import make_app, steps, wait_until
from textual.widgets import Input

from mptui.app.app import MptuiApp
from mptui.app.screens import ExportScreen
from mptui.engine.api import EngineState, SessionFolder
from mptui.engine.output import export
from mptui.engine.search.pruning import Pruning
from mptui.engine.session import files as session_files
from tests.conftest import DeviceFault, arm_on_call

#: The lost device's error, as the issue words it.
LAUNCH_FAILURE = "CUDA error: unspecified launch failure"


async def test_an_export_to_a_full_disk_is_a_notice_and_the_run_goes_on(
    tiny_model_dir, calibration_file, tmp_path, small_disk
):
    export = small_disk / "export"
    app = make_app(tiny_model_dir("llama"), calibration_file, tmp_path, {"export_dir": export})
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: len(steps(app)) >= 1)
        await pilot.press("space")
        await wait_until(pilot, lambda: app.state.state == "paused")
        await pilot.press("x")
        await wait_until(
            pilot, lambda: isinstance(app.screen, ExportScreen) and app.screen.query(Input)
        )
        await pilot.press("enter")
        wanted = (
            f"export failed: no space left on device in {small_disk} while writing the export "
            "'export' (none of it was kept)"
        )
        await wait_until(pilot, lambda: wanted in notices(app))
        paused_at = len(steps(app))
        await pilot.press("space")  # the run goes on
        await wait_until(pilot, lambda: app.state.finished is not None)
        assert app.state.finished == "done" and len(steps(app)) > paused_at
        assert app.state.exported is None and list(small_disk.iterdir()) == []


def resume_hint(session: Path) -> str:
    return (
        f"; the session keeps every committed step: mptui --resume {session} "
        "(on any device: add --device cuda:N or --device cpu)"
    )


async def ended_in_error(pilot, app: MptuiApp) -> str:
    """The line the run ended with, once the app shows it: as the one engine error notice and
    on the status line, in the ERROR state (which the status line keeps once the engine has
    ended, as it does after a failure after the search)."""
    await wait_until(
        pilot,
        lambda: EngineState.ERROR in (app.state.state, app.state.ended_as) and app.state.error,
    )
    line = app.state.error
    await wait_until(pilot, lambda: line in str(app.query_one("#status").render()))
    await wait_until(pilot, lambda: line in notices(app))  # the notice comes in its own message
    errors = [n for n in app._notifications if n.title == "engine error"]
    assert [n.message for n in errors] == [line]
    assert "ERROR" in str(app.query_one("#status").render())
    return line


def notices(app: MptuiApp) -> list[str]:
    return [notification.message for notification in app._notifications]


def journal_of(session: Path) -> list[str]:
    return [step.structure.id for step in SessionFolder(session).read_journal().steps]


async def test_a_full_disk_at_the_journal_ends_the_run_with_one_line_in_the_app(
    disk_full, tiny_model_dir, calibration_file, tmp_path
):
    session = tmp_path / "session"
    app = make_app(tiny_model_dir("llama"), calibration_file, tmp_path, session=session)
    refused = disk_full(session_files.JOURNAL, 2)  # the third step's line does not fit
    async with app.run_test(size=(120, 40)) as pilot:
        line = await ended_in_error(pilot, app)
        assert refused and line == (
            f"no space left on device in {session} while writing journal.jsonl: free space, "
            f"then continue with mptui --resume {session}"
        )
        committed = [step.structure.id for step in steps(app)]
        assert len(committed) == 2 and journal_of(session) == committed
        assert len(app.state.steps) == 2  # the screen shows what was kept, nothing more
        await pilot.press("q", "y")
    assert app.return_code in (None, 0)


async def test_a_failed_run_that_lingers_still_exports_from_the_app(
    disk_full, tiny_model_dir, calibration_file, tmp_path
):
    """Failed (a full disk at the journal) but lingering in ERROR: the command table acts on an
    Export there, and the app sends it (it used to refuse every command but Stop)."""
    session = tmp_path / "session"
    app = make_app(tiny_model_dir("llama"), calibration_file, tmp_path, session=session)
    disk_full(session_files.JOURNAL, 2)
    async with app.run_test(size=(120, 40)) as pilot:
        await ended_in_error(pilot, app)
        await pilot.press("x")
        await wait_until(
            pilot, lambda: isinstance(app.screen, ExportScreen) and app.screen.query(Input)
        )
        await pilot.press("enter")  # the session's export/ folder
        await wait_until(pilot, lambda: app.state.exported is not None)
        assert app.state.exported.params == app.engine.pruning.params
        assert weights_file(session / session_files.EXPORT).is_file()
        assert app.engine.state is EngineState.ERROR  # still lingering
        await pilot.press("q", "y")
    assert app.return_code in (None, 0)


async def test_a_lost_device_at_a_candidate_ends_the_run_with_one_line_in_the_app(
    tiny_model_dir, calibration_file, tmp_path, monkeypatch
):
    session = tmp_path / "session"
    app = make_app(tiny_model_dir("llama"), calibration_file, tmp_path, session=session)
    fault = DeviceFault(lambda: RuntimeError(LAUNCH_FAILURE))
    arm_on_call(monkeypatch, fault, Pruning, "candidate_row_nll", 10)  # 8, then 2 of 7
    with fault.installed():
        async with app.run_test(size=(120, 40)) as pilot:
            line = await ended_in_error(pilot, app)
            assert fault.fired == 1 and line == (
                f"the GPU failed ({LAUNCH_FAILURE}) while scoring candidate 2 of 7 in step 2"
                + resume_hint(session)
            )
            committed = [step.structure.id for step in steps(app)]
            assert len(committed) == 1 and journal_of(session) == committed
            await pilot.press("q", "y")
    assert app.return_code in (None, 0)


def fail_the_export(monkeypatch) -> None:
    """The copy of the weights to the host meets the lost device."""

    def copy_fails(*args):
        raise RuntimeError(LAUNCH_FAILURE)

    monkeypatch.setattr(export, "_kept_tensors", copy_fails)


@pytest.mark.parametrize(("key", "during"), [("e", "evaluating"), ("x", "exporting to {}")])
async def test_a_lost_device_after_the_search_ends_the_run_with_one_line_in_the_app(
    key, during, tiny_model_dir, calibration_file, tmp_path, monkeypatch
):
    from mptui.engine.api import EvalRequest

    session, target = tmp_path / "session", tmp_path / "export"
    options = {"eval_request": EvalRequest(text=str(calibration_file), seqlen=32),
               "export_dir": target}  # fmt: skip
    app = make_app(tiny_model_dir("llama"), calibration_file, tmp_path, options, session=session)
    fault = DeviceFault(lambda: RuntimeError(LAUNCH_FAILURE))
    with fault.installed():
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: app.state.finished == "done")
            committed = [step.structure.id for step in steps(app)]
            if key == "e":
                fault.armed = True  # the evaluation's first forward
            else:
                fail_the_export(monkeypatch)
            await pilot.press(key)
            if key == "x":
                await wait_until(
                    pilot, lambda: isinstance(app.screen, ExportScreen) and app.screen.query(Input)
                )
                await pilot.press("enter")
            line = await ended_in_error(pilot, app)
            assert line == (
                f"the GPU failed ({LAUNCH_FAILURE}) while {during.format(target)}"
                + resume_hint(session)
            )
            assert app.engine.join(30)  # the device is gone: nothing more is served
            assert app.state.activity is None and not target.exists()
            assert journal_of(session) == committed and len(committed) >= 2
            await pilot.press("u")  # a command now would wait for ever: the app says so
            await wait_until(pilot, lambda: "the run has ended; q leaves" in notices(app))
            await pilot.press("q", "y")
    assert app.return_code in (None, 0)
