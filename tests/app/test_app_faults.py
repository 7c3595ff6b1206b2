"""The app on a shared box: an export that finds the disk full is a notice, and the search goes
on to its end (the headless side of full disks is tests/engine/test_faults_disk.py)."""

from __future__ import annotations

from test_app import make_app, steps, wait_until
from textual.widgets import Input

from mptui.app.screens import ExportScreen


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
        await wait_until(pilot, lambda: wanted in [n.message for n in app._notifications])
        paused_at = len(steps(app))
        await pilot.press("space")  # the run goes on
        await wait_until(pilot, lambda: app.state.finished is not None)
        assert app.state.finished == "done" and len(steps(app)) > paused_at
        assert app.state.exported is None and list(small_disk.iterdir()) == []
