"""The app driven by Textual's pilot over the real engine on a tiny model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from app_replay import NoGpu, fixed_run_events
from conftest import weights_file
from textual.widgets import DataTable, Input

from mptui.app.app import MptuiApp
from mptui.app.screens import EvaluationScreen, ExportScreen
from mptui.app.state import RunState, display_name
from mptui.app.themes import load_themes
from mptui.engine.api import (
    CalibrationSpec,
    Engine,
    PruneSettings,
    RunRequest,
    SessionFolder,
    SessionRecorder,
    commands,
)
from mptui.engine.api import events as ev
from mptui.engine.output.evaluate import EvalRequest
from mptui.engine.search.plan import PlanStep
from mptui.engine.search.structures import Structure

TIMEOUT = 60


def make_app(
    model, calibration, tmp_path, app_options=None, *, session: Path | None = None, **settings
) -> MptuiApp:
    """The app over a real engine; with ``session``, the engine keeps that session folder as
    ``mptui`` does (journal, plan.json, event log), and the app knows it."""
    options = {"mlp_group": 40} | settings
    run_settings = PruneSettings.with_distribution(
        0.35, "30:40:30", calibration=CalibrationSpec(str(calibration), 0, 32), **options
    )
    request = RunRequest(str(model), run_settings, cache_dir=tmp_path)
    if session is None:
        engine = Engine(request, linger=True)
    else:
        folder = SessionFolder(session)
        session.mkdir(parents=True, exist_ok=True)
        engine = Engine(
            request, linger=True, journal=folder, plan_dirs=[session], session_dir=session
        )
        engine.subscribe(SessionRecorder(folder, engine.plan))
        app_options = {"session_dir": session} | (app_options or {})
    return MptuiApp(
        engine, gpu_reader=NoGpu(), user_theme_dir=tmp_path / "themes", **(app_options or {})
    )


async def wait_until(pilot, predicate, timeout: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await pilot.pause(0.05)


async def engine_idle(pilot, app: MptuiApp, seen: list) -> list:
    """Proof, without a clock, that the engine holds (paused, or waiting for the user): two
    commands it only answers with a notice (an override of no structure), the second sent once
    the first is answered; an engine that went on working would score a candidate between the
    two. ``seen`` is a subscriber's list of the engine's events; returns those after the latest
    state change, up to the second answer."""
    since = max(i for i, e in enumerate(seen) if isinstance(e, ev.StateChanged))
    for answered in (1, 2):
        app.engine.send(commands.Override("no-such-structure"))
        await wait_until(pilot, lambda n=answered: len(ignored_overrides(seen[since:])) == n)
    return seen[since:]


def ignored_overrides(events: list) -> list:
    return [e for e in events if isinstance(e, ev.Notice) and "override ignored" in e.message]


def worked(events: list) -> list:
    return [e for e in events if isinstance(e, (ev.CandidateScored, ev.StepCommitted))]


def steps(app: MptuiApp) -> list[PlanStep]:
    return list(app.engine.pruning.steps) if app.engine.pruning else []


def shown_commits(app: MptuiApp) -> int:
    return len(app.state.curve) - 1  # the curve starts at the dense model


@pytest.fixture
def llama(tiny_model_dir):
    return tiny_model_dir("llama")


async def test_pause_stops_commits_and_resume_finishes(llama, calibration_file, tmp_path):
    app = make_app(llama, calibration_file, tmp_path)
    seen: list = []
    app.engine.subscribe(seen.append)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: len(steps(app)) >= 1)
        await pilot.press("space")
        await wait_until(pilot, lambda: app.state.state == "paused")
        count = len(steps(app))
        assert worked(await engine_idle(pilot, app, seen)) == []
        assert len(steps(app)) == count
        assert "PAUSED" in str(app.query_one("#status").render())
        await pilot.press("space")
        await wait_until(pilot, lambda: app.state.finished is not None)
        assert app.state.finished == "done"
        assert len(steps(app)) > count
        assert app.state.curve[-1].ratio >= 0.35


async def test_override_from_the_candidates_table(llama, calibration_file, tmp_path):
    # guided mode: the whole ranking is in and the engine waits, so the table holds still
    app = make_app(llama, calibration_file, tmp_path, guided=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.state.proposal is not None)
        table = app.query_one("#candidates")
        table.focus()
        table.move_cursor(row=0)
        await pilot.press("down")  # the second best: not the engine's choice
        chosen = table.selected_structure()
        assert chosen == app.state.ranked()[1].structure != app.state.proposal.structure
        await pilot.press("enter")
        await wait_until(pilot, lambda: shown_commits(app) == 1)
        (step,) = steps(app)
        assert step.structure.id == chosen
        assert step.chosen_by == "user"
        assert app.state.curve[-1].chosen_by == "user"


async def test_override_by_typing_an_id(llama, calibration_file, tmp_path):
    app = make_app(llama, calibration_file, tmp_path)
    app.engine.send(commands.Pause())  # paused once loaded, before step 1 can start (no race)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.state.state == "paused")
        await pilot.press("o")
        await pilot.press("ctrl+a", *"L2.mlp", "enter")  # replace any suggestion
        await pilot.press("space")
        await wait_until(pilot, lambda: len(steps(app)) >= 1)
        first = steps(app)[0]
        assert first.structure.to_dict() == {"kind": "mlp_block", "layer": 2}
        assert first.chosen_by == "user"


async def test_order_screen_changes_the_next_dimension(llama, calibration_file, tmp_path):
    app = make_app(llama, calibration_file, tmp_path)
    app.engine.send(commands.Pause())  # paused once loaded: a step in progress keeps its order
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.state.state == "paused" and app.state.order)
        await pilot.press("d")
        # the six orders are listed in permutation order; the last starts with attn_heads
        await pilot.press("end", "enter")
        await pilot.press("space")
        await wait_until(pilot, lambda: len(steps(app)) >= 1)
        assert steps(app)[0].dimension == "attn_heads"
        assert app.engine.pruning.settings.order[0] == "attn_heads"


async def test_undo_restores_the_previous_state(llama, calibration_file, tmp_path):
    app = make_app(llama, calibration_file, tmp_path, guided=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.state.proposal is not None)
        await pilot.press("a")
        # wait on what the screen shows (the app state), not on the engine's own pruning
        await wait_until(pilot, lambda: shown_commits(app) == 1 and app.state.proposal)
        layers_after_one = [row.__dict__.copy() for row in app.state.layers]
        ratio_after_one = app.state.ratio
        await pilot.press("a")
        await wait_until(pilot, lambda: shown_commits(app) == 2 and app.state.proposal)
        await pilot.press("u")
        await wait_until(pilot, lambda: shown_commits(app) == 1 and app.state.proposal)
        assert len(steps(app)) == 1
        assert app.state.ratio == pytest.approx(ratio_after_one)
        assert [row.__dict__ for row in app.state.layers] == layers_after_one


async def test_guided_mode_waits_for_the_user(llama, calibration_file, tmp_path):
    app = make_app(llama, calibration_file, tmp_path)
    seen: list = []
    app.engine.subscribe(seen.append)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("g")
        await wait_until(pilot, lambda: app.state.guided)  # the engine's GuidedChanged
        await wait_until(pilot, lambda: app.state.proposal is not None)
        committed = len(steps(app))
        assert app.state.state_label == "WAITING FOR YOU"
        assert worked(await engine_idle(pilot, app, seen)) == []
        assert len(steps(app)) == committed
        await pilot.press("a")
        await wait_until(pilot, lambda: len(steps(app)) == committed + 1)
        assert steps(app)[-1].chosen_by == "engine"


async def test_help_screen_and_quit_asks(llama, calibration_file, tmp_path):
    app = make_app(llama, calibration_file, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("question_mark")
        assert "Removed per layer" in str(app.screen.query_one("#help-text").render())
        await pilot.press("escape")
        await pilot.press("q")
        assert type(app.screen).__name__ == "QuitScreen"
        await pilot.press("n")
        assert type(app.screen).__name__ == "Screen"
        await pilot.press("q", "y")
    assert app.engine.join(TIMEOUT)


async def test_evaluate_and_export_from_the_app(llama, calibration_file, tmp_path):
    request = EvalRequest(text=str(calibration_file), seqlen=32)
    options = {"eval_request": request, "export_dir": tmp_path / "export"}
    app = make_app(llama, calibration_file, tmp_path, options)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: len(steps(app)) >= 1)
        await pilot.press("space")
        await wait_until(pilot, lambda: app.state.state == "paused")
        await pilot.press("e")
        await wait_until(
            pilot, lambda: isinstance(app.screen, EvaluationScreen) and app.screen.query(DataTable)
        )
        table = app.screen.query_one("#evaluation", DataTable)
        what, dense, pruned, change = table.get_row_at(0)
        assert what == "perplexity" and float(dense) != float(pruned)
        # each cell is rounded for display: the shown change is within rounding of the difference
        assert float(change) == pytest.approx(float(pruned) - float(dense), abs=6e-3)
        await pilot.press("escape")
        await pilot.press("x")
        await wait_until(
            pilot, lambda: isinstance(app.screen, ExportScreen) and app.screen.query(Input)
        )
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.state.exported is not None)
        assert app.state.exported.params == app.engine.pruning.params
        assert weights_file(tmp_path / "export").is_file()
        assert app.state.activity is None
        await pilot.press("space")
        await wait_until(pilot, lambda: app.state.finished is not None)
        first = app.state.exported
        await pilot.press("x")
        await wait_until(
            pilot, lambda: isinstance(app.screen, ExportScreen) and app.screen.query(Input)
        )
        app.screen.query_one(Input).value = str(tmp_path / "final")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.state.exported is not first)
        assert app.state.exported.params == app.engine.pruning.params < first.params


def test_state_keeps_the_last_table_until_the_next_first_score():
    state = RunState()
    for event in fixed_run_events():
        state.apply(event)
    assert [row.structure for row in state.ranked()][:2] == ["L3.mlp-46", "L1.mlp-46"]
    assert state.layers[6].attn_removed and state.layers[7].mlp_removed
    assert state.layers[2].mlp_width == 466
    assert state.curve[-1].chosen_by == "user"


def test_an_undo_makes_the_next_score_start_a_fresh_table():
    from mptui.engine.control import events as ev

    state = RunState()
    for event in fixed_run_events():  # the table shows step 4 of mlp_channels
        state.apply(event)
    step = PlanStep(4, Structure("mlp_channels", 3, 46, 466), 45.9, 0, 0.14, "engine")
    state.apply(ev.StepCommitted(step, 45.9, 0.14, 0.16, 0, 1.0, 7, 1))
    state.apply(ev.StepUndone(4, "L3.mlp-46", 45.6, 0.136))
    # step 4 is scored again: same number, same dimension, but only fresh scores are shown
    state.apply(ev.CandidateScored(4, "mlp_channels", "L5.mlp-46", 45.0, -0.6, 70_656, 1, 7))
    assert list(state.candidates) == ["L5.mlp-46"]
    assert state.layers[3].mlp_width == 512  # the undone width step is back


def test_bad_user_theme_gives_a_notice_and_the_default(tmp_path):
    folder = tmp_path / "themes"
    folder.mkdir()
    (folder / "broken.toml").write_text("name = 'x'\nprimary = 'not-a-colour'\n")
    (folder / "mine.toml").write_text("name = 'mine'\nprimary = '#ff0000'\n")
    themes, problems = load_themes(folder)
    assert {"mptui-dark", "mptui-light", "mptui-high-contrast", "mine"} <= set(themes)
    assert len(problems) == 1 and "broken.toml" in problems[0]


def test_snapshot_80x24(snap_compare):
    app = MptuiApp(replay=fixed_run_events(), gpu_reader=NoGpu())
    assert snap_compare(app, terminal_size=(80, 24))


def test_snapshot_160x48(snap_compare):
    app = MptuiApp(replay=fixed_run_events(), gpu_reader=NoGpu())
    assert snap_compare(app, terminal_size=(160, 48))


async def test_repaints_are_bounded_however_fast_events_arrive():
    app = MptuiApp(replay=fixed_run_events(), gpu_reader=NoGpu())
    async with app.run_test(size=(100, 30)) as pilot:
        repaints = []
        original = app.repaint
        app.repaint = lambda: (repaints.append(1), original())[1]
        for k in range(5000):  # a burst far faster than any screen
            app._inbox.append(
                ev.CandidateScored(9, "attn_heads", f"L{k % 8}.heads-96", 50.0 + k, k, 1, k, 5000)
            )
        # the next drain takes the whole burst in one repaint; drains with nothing new repaint
        # nothing (the timer's drains, and two more here, which need no waiting)
        await wait_until(pilot, lambda: not app._inbox and repaints)
        app.drain()
        app.drain()
        assert len(repaints) == 1
        assert len(app.state.candidates) == 8  # every event was folded in, once


async def test_no_color_is_respected(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = MptuiApp(replay=fixed_run_events(), gpu_reader=NoGpu())
    async with app.run_test(size=(80, 24)):
        assert app.no_color


@pytest.mark.parametrize(
    ("given", "shown"),
    [("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf"),
     ("/srv/models/llama-7b/", "llama-7b"), ("./demo/model", "demo"), ("~/m/qwen", "qwen")],
)  # fmt: skip
def test_the_status_line_names_a_local_model_by_its_folder(given, shown):
    assert display_name(given) == shown


async def test_the_status_line_shows_the_method(llama, calibration_file, tmp_path):
    app = make_app(llama, calibration_file, tmp_path, method="sleb")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.state.finished is not None)
        assert "sleb › —" in str(app.query_one("#status").render())  # done: no dimension left
        assert {step.structure.kind for step in steps(app)} == {"attn_block", "mlp_block"}
