"""The app's ``c``: once the search has ended, this session beside the other ended sessions of
its model and calibration in the same folder, from their plans (nothing is loaded)."""

from __future__ import annotations

import json

import pytest
from app_replay import NoGpu, fixed_run_events
from conftest import headless_session
from textual.widgets import DataTable

from mptui.app.app import MptuiApp
from mptui.app.screens import ComparisonScreen
from mptui.engine.control import events as ev
from mptui.engine.search.plan import read_plan_file
from mptui.engine.session import files as session_files


@pytest.fixture(scope="module")
def sessions(tiny_model_dir, calibration_file, tmp_path_factory):
    """Ended sessions side by side: two of one model and calibration, one of another
    calibration, and a folder that is no session; and one session alone in its folder."""
    root = tmp_path_factory.mktemp("sessions")
    llama = tiny_model_dir("llama")
    made = {
        "mp": headless_session(llama, calibration_file, root / "mp"),
        "sleb": headless_session(llama, calibration_file, root / "sleb", "--method", "sleb"),
        "alone": headless_session(llama, calibration_file, root / "solo" / "alone"),
    }
    headless_session(llama, calibration_file, root / "seqlen16", "--seqlen", "16")
    (root / "notes").mkdir()
    return made


def app_on(session, notes: list[str]) -> MptuiApp:
    """The app over a fixed run (no engine) whose session folder is ``session``; notifications
    go to ``notes``."""
    app = MptuiApp(replay=fixed_run_events(), gpu_reader=NoGpu(), session_dir=session)
    app.notify = lambda message, **options: notes.append(message)
    return app


def finished(session) -> ev.Finished:
    return ev.Finished("done", json.loads((session / session_files.PLAN).read_text()))


async def test_c_after_the_search_shows_the_sessions_beside_this_one(sessions):
    notes: list[str] = []
    app = app_on(sessions["mp"], notes)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("c")  # the search still runs: c is not there yet
        await pilot.pause()
        assert not isinstance(app.screen, ComparisonScreen) and not notes
        assert "c" not in app.screen.active_bindings  # nor in the footer
        app._inbox.append(finished(sessions["mp"]))
        await pilot.pause(0.5)
        assert app.state.search_over
        assert "c" in app.screen.active_bindings
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ComparisonScreen), notes
        table = app.screen.query_one("#comparison", DataTable)
        rows = [tuple(table.get_row_at(index)) for index in range(table.row_count)]
        assert [row[:2] for row in rows] == [
            ("dense", "dense"), ("mp", "multipruner"), ("sleb", "sleb")
        ]  # fmt: skip
        sleb = read_plan_file(sessions["sleb"] / session_files.PLAN)
        assert rows[0][5] == f"{sleb.dense_score:.3f}"  # after the target column
        assert rows[2][2:6] == (
            f"{sleb.steps[-1].params:,}", f"{sleb.ratio:.2%}",
            f"{sleb.settings['target_ratio']:.2%}", f"{sleb.steps[-1].score:.3f}",
        )  # fmt: skip
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ComparisonScreen)


async def test_c_with_no_other_session_says_so_in_one_line(sessions):
    notes: list[str] = []
    app = app_on(sessions["alone"], notes)
    async with app.run_test(size=(120, 40)) as pilot:
        app._inbox.append(finished(sessions["alone"]))
        await pilot.pause(0.5)
        await pilot.press("c")
        await pilot.pause()
        assert not isinstance(app.screen, ComparisonScreen)
        assert len(notes) == 1 and "\n" not in notes[0]
        assert notes[0].startswith("no other ended session of this model and calibration in ")
