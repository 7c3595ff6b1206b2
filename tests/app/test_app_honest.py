"""Every pane honest at 80x24 and at 120x36: nothing cut mid-number, nothing shown that is not
so (an ETA before any rate, a chart of -1..1), no silent stretch, and the keys README states.

The app runs over the real engine on a tiny model where the engine's behaviour is the point
(guided mode, the override prompt, an evaluation or a validation under way, a target below
the smallest structure), and over a replay of fixed events where only the drawing is.
"""

from __future__ import annotations

import json
import threading

import pytest
from app_replay import NoGpu, fixed_run_events
from conftest import headless_session
from rich.cells import cell_len
from test_app import TIMEOUT, make_app, shown_commits, steps, wait_until
from textual.widgets import DataTable, Footer, Input, Label

from mptui.app.app import MptuiApp
from mptui.app.panes import CandidatesPane, second_line, sparkline
from mptui.app.recovery_pane import recovery_subtitle
from mptui.app.screens import (
    ComparisonScreen,
    EvaluationScreen,
    HelpText,
    QuitScreen,
    help_text,
)
from mptui.app.state import RecoveryView, RunState
from mptui.engine.api import (
    CalibrationSpec,
    Engine,
    EvalRequest,
    PruneSettings,
    RecoverySettings,
    RunRequest,
    commands,
    recovery_events,
)
from mptui.engine.api import events as ev
from mptui.engine.session import files as session_files

SIZES = [(80, 24), (120, 36)]


@pytest.fixture
def llama(tiny_model_dir):
    return tiny_model_dir("llama")


def status_text(app: MptuiApp) -> str:
    return str(app.query_one("#status").render())


def plot_text(widget) -> str:
    """What a plotext pane draws, as plain text."""
    return widget.render().plain


class Hold:
    """A subscriber (on the engine thread) that holds the engine at the first event
    ``matches`` accepts, until :meth:`release`: whatever the app is asked meanwhile, the engine
    is provably still inside that stretch (an evaluation, a validation)."""

    def __init__(self, matches) -> None:
        self.matches = matches
        self.reached = threading.Event()
        self._released = threading.Event()

    def __call__(self, event) -> None:
        if not self.reached.is_set() and self.matches(event):
            self.reached.set()
            self._released.wait(TIMEOUT)  # never for good: a failed test lets the engine go

    def release(self) -> None:
        self._released.set()


# --- the status line ---------------------------------------------------------------------------
def running_state(k: int) -> RunState:
    state = RunState()
    for event in fixed_run_events()[:-8]:  # up to step 4's start: nothing scored yet
        state.apply(event)
    for event in fixed_run_events()[-8:][: 2 * k]:
        state.apply(event)
    return state


def test_no_eta_before_the_first_candidate_is_scored():
    state = running_state(0)
    assert state.progress == (0, 7)
    line = second_line(state, 120).plain
    assert "candidate 0/7" in line and "ETA" not in line
    line = second_line(running_state(1), 120).plain
    assert "candidate 1/7, ETA 0m27s" in line


@pytest.mark.parametrize("width", [80, 120])
def test_a_long_activity_is_shortened_never_its_share(width):
    state = running_state(2)
    path = "/home/someone/sessions/llama-2-7b-run-3/export-final-with-a-long-name"
    state.apply(ev.Activity(ev.ActivityKind.EXPORT, f"exporting to {path}", 400, 1000))
    line = second_line(state, width).plain
    assert cell_len(line) <= width
    assert line.endswith(" 40%") and "⧗ exporting to /home/" in line
    assert "45.600" in line  # the perplexity now stays whole


def test_the_status_line_fits_80_columns_with_a_proposal():
    state = running_state(7)
    state.apply(ev.Proposal(4, "L3.mlp-46", 45.9))
    state.apply(ev.StateChanged("waiting"))
    line = second_line(state, 80).plain
    assert cell_len(line) <= 80 and "▶ L3.mlp-46: a accept, o override" in line


# --- the footer, the help ----------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
async def test_the_footer_shows_help_and_the_help_wraps_cleanly(size):
    app = MptuiApp(replay=fixed_run_events(), gpu_reader=NoGpu())
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        footer = app.query_one(Footer)
        keys = {key.key: key for key in footer.query("FooterKey")}
        assert keys["question_mark"].region.right <= size[0]  # on screen, not scrolled off
        if size[0] >= 120:
            assert keys["q"].region.right <= size[0]
        await pilot.press("question_mark")
        await pilot.pause()
        help_widget = app.screen.query_one(HelpText)
        lines = help_widget.render().plain.splitlines()
        assert max(cell_len(line) for line in lines) <= help_widget.size.width
        for line in lines:  # a wrapped description goes on under itself, never under a name
            assert line == "" or line.startswith(" ") or line in ("Panes", "Keys")
        assert any(line.lstrip().startswith("r ") for line in lines)  # recovery's key is there


def test_help_text_keeps_descriptions_beside_their_names():
    lines = help_text(50).plain.splitlines()
    column = lines.index("Keys") + 1
    indent = lines[column].index("pause")  # where every description of a key starts
    for line in lines[column + 1 :]:
        assert cell_len(line) <= 50
        assert line[:indent].strip() == "" or line[indent - 1] == " "


# --- the charts, the memory pane ---------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
async def test_one_point_charts_run_from_their_first_point(size):
    loaded = fixed_run_events()[:5]  # the dense model only: one point on the curve
    app = MptuiApp(replay=loaded, gpu_reader=NoGpu())
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        axis = plot_text(app.perplexity).splitlines()[-2]  # the x tick labels
        assert "-1" not in axis and axis.split()[0] == "0.0" and axis.split()[-1] == "25.0"
        app._inbox.extend([
            ev.Finished("done", {}), ev.StateChanged("recovering"),
            recovery_events.RecoveryStarted(0, 300, 1000, 2_000_000, 100, 8, {}),
            recovery_events.RecoveryValidated(0, 65.4),
        ])  # fmt: skip
        await wait_until(pilot, lambda: app.recovery.display and app.state.recovery.validation)
        await pilot.pause()
        drawn = plot_text(app.recovery)
        axis = drawn.splitlines()[-2]
        assert "-1" not in axis and axis.split()[0] == "0" and axis.split()[-1] == "300"
        assert "⅃" not in drawn and " L " not in drawn  # plotext's side glyphs: no legend there
        assert "• loss" in str(app.recovery.border_title)


def test_the_recovery_subtitle_drops_whole_parts_to_fit():
    recovery = RecoveryView(
        step=120, steps=300, lr=8.2e-4, tokens_per_s=3202.0, eta_s=65.0,
        loss=[(1, 4.4), (120, 2.4)], validation=[(0, 65.4), (120, 63.0)],
    )  # fmt: skip
    full = recovery_subtitle(recovery)
    assert full == ("step 120/300 · lr 8.2e-04 · 3,202 tok/s · ETA 1m05s · val ppl 65.40 → 63.00")
    for width in range(20, len(full) + 1):
        shown = recovery_subtitle(recovery, width)
        assert shown and cell_len(shown) <= width
        assert set(shown.split(" · ")) <= set(full.split(" · "))  # whole parts only
    assert recovery_subtitle(recovery, 34) == "ETA 1m05s · val ppl 65.40 → 63.00"
    before = RecoveryView(steps=300, validating=(3, 8))
    assert recovery_subtitle(before) == "step 0/300 · validating 38%"  # no "lr 0.0e+00"


async def test_the_memory_history_keeps_one_line():
    samples = [ev.MemorySample(rss_bytes=(500 + k) * 2**20) for k in range(60)]
    app = MptuiApp(replay=[*fixed_run_events(), *samples], gpu_reader=NoGpu())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.memory.show(app.state)  # as every repaint tick does, now that it is laid out
        lines = app.memory.render().plain.splitlines()
        width = app.memory.size.width
        assert width < 60 and lines[-1] and cell_len(lines[-1]) <= width
        assert lines[-1] == sparkline([s.rss_bytes for s in app.state.memory],
                                      int(max(s.rss_bytes for s in app.state.memory) * 1.25),
                                      width)  # fmt: skip


async def test_the_candidates_fit_80_columns_with_a_blocks_step():
    events = fixed_run_events()[:5]
    events.append(ev.StepStarted(1, "blocks", ("L0.attn",), 37.91))
    rows = [("L0.attn", 1327.784), ("L0.mlp", 1509.321), ("L12.heads-128", 38.2)]
    for k, (structure, score) in enumerate(rows, start=1):
        events.append(ev.CandidateScored(1, "blocks", structure, score, score - 37.91,
                                         295_104, k, len(rows)))  # fmt: skip
    app = MptuiApp(replay=events, gpu_reader=NoGpu())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        table = app.query_one(CandidatesPane)
        assert table.virtual_size.width <= table.scrollable_content_region.width
        cells = [tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]
        assert [c.strip() for c in cells[-1]] == ["L0.mlp", "1509.3", "+1471.4", "295.1k"]


# --- guided mode, the override prompt ------------------------------------------------------
async def test_guided_mode_scrolls_the_table_to_the_proposal(llama, calibration_file, tmp_path):
    app = make_app(llama, calibration_file, tmp_path, guided=True)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(CandidatesPane)
        table.focus()
        await wait_until(pilot, lambda: app.state.proposal is not None)
        await wait_until(pilot, lambda: table.selected_structure() == app.state.proposal.structure)
        # the user goes to the last row: the cursor stays there, out of the proposal's way
        await pilot.press("ctrl+end")
        last = table.row_count - 1
        assert table.cursor_row == last and table.row_count > visible_rows(table)
        app.repaint()
        assert table.cursor_row == last
        await pilot.press("a")  # the next step's proposal takes the cursor back, in view
        await wait_until(pilot, lambda: shown_commits(app) == 1 and app.state.proposal)
        proposal = app.state.proposal.structure
        await wait_until(pilot, lambda: table.selected_structure() == proposal)
        await pilot.pause()
        row = table.get_row_index(proposal)
        assert round(table.scroll_y) <= row < round(table.scroll_y) + visible_rows(table)
        assert str(table.get_row_at(row)[0]).strip() == f"▶ {proposal}"


def visible_rows(table: DataTable) -> int:
    return table.scrollable_content_region.height - table.header_height


async def test_the_override_prompt_offers_this_models_structures(llama, calibration_file, tmp_path):
    app = make_app(llama, calibration_file, tmp_path)
    app.engine.send(commands.Pause())  # paused once loaded, before step 1 can start
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.state.state == "paused")
        await pilot.press("o")
        await wait_until(pilot, lambda: app.screen.query(Input))
        prompt = str(app.screen.query_one(Label).render())
        examples = prompt.removeprefix("Remove next (").removesuffix("):").split(", ")
        pruning = app.engine.pruning
        layers = pruning.adapter.num_layers
        assert examples == [
            f"L{layers - 1}.attn", f"L{layers // 2}.mlp", f"L0.mlp-{app.state.mlp_group}",
            f"L0.heads-{app.state.attn_group}",
        ]  # fmt: skip
        assert app.state.mlp_group == 40 and app.state.attn_group > 0
        typed = examples[2]  # one of them, as shown: the engine takes it
        await pilot.press("ctrl+a", *typed, "enter")
        await pilot.press("space")
        await wait_until(pilot, lambda: len(steps(app)) >= 1)
        assert steps(app)[0].structure.id == typed and steps(app)[0].chosen_by == "user"


# --- quitting ----------------------------------------------------------------------------------
async def test_q_while_an_evaluation_runs_says_it_is_dropped(llama, calibration_file, tmp_path):
    request = EvalRequest(text=str(calibration_file), seqlen=32)
    app = make_app(llama, calibration_file, tmp_path, {"eval_request": request})
    seen: list = []
    app.engine.subscribe(seen.append)
    hold = Hold(lambda e: isinstance(e, ev.Activity) and e.kind is ev.ActivityKind.EVALUATION)
    app.engine.subscribe(hold)
    app.engine.send(commands.Pause())
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: app.state.state == "paused")
            await pilot.press("e")
            await wait_until(pilot, lambda: hold.reached.is_set() and app.state.evaluating)
            await pilot.press("q")
            await wait_until(pilot, lambda: isinstance(app.screen, QuitScreen))
            text = str(app.screen.query_one("#quit-text", Label).render())
            assert "The evaluation under way is dropped." in text
            label = app.screen.query_one("#quit-text", Label)
            dialog = app.screen.query_one("#dialog")
            assert label.region.right <= dialog.content_region.right <= 80  # wrapped, not cut
            await pilot.press("y")
            hold.release()
        assert app.engine.join(TIMEOUT)
    finally:
        hold.release()
    assert not any(isinstance(e, ev.Evaluated) for e in seen)
    assert any(isinstance(e, ev.Notice) and "evaluation cancelled" in e.message for e in seen)


async def test_q_on_a_result_closes_it_and_asks_to_quit():
    app = MptuiApp(replay=fixed_run_events(), gpu_reader=NoGpu())
    result = {"perplexity": 40.0}
    async with app.run_test(size=(80, 24)) as pilot:
        app._inbox.append(ev.Evaluated(result, {"perplexity": 45.0}, 3, 0.136))
        await wait_until(pilot, lambda: isinstance(app.screen, EvaluationScreen))
        await pilot.press("q")
        await wait_until(pilot, lambda: isinstance(app.screen, QuitScreen))
        assert not any(isinstance(screen, EvaluationScreen) for screen in app.screen_stack)
        await pilot.press("n")
        await wait_until(pilot, lambda: not isinstance(app.screen, QuitScreen))
        assert len(app.screen_stack) == 1  # back on the run, the result closed
        table = app.query_one("#candidates", DataTable)
        assert table.row_count == 4


@pytest.mark.parametrize("size", SIZES)
async def test_the_comparison_marks_this_session_and_fits(size, llama, calibration_file, tmp_path):
    mine = headless_session(llama, calibration_file, tmp_path / "a-session-of-mine")
    headless_session(llama, calibration_file, tmp_path / "sleb", "--method", "sleb")
    plan = json.loads((mine / session_files.PLAN).read_text())
    app = MptuiApp(replay=fixed_run_events(), gpu_reader=NoGpu(), session_dir=mine)
    async with app.run_test(size=size) as pilot:
        app._inbox.append(ev.Finished("done", plan))
        await wait_until(pilot, lambda: app.state.search_over)
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ComparisonScreen))
        await pilot.pause()
        table = app.screen.query_one("#comparison", DataTable)
        labels = [str(row.label or "") for row in table.ordered_rows]
        names = [table.get_row_at(i)[0] for i in range(table.row_count)]
        assert labels[names.index("a-session-of-mine")] == "▶"
        assert [label for label in labels if label] == ["▶"]  # this one, and only it
        assert table.virtual_size.width <= table.scrollable_content_region.width  # not cut
        dialog = app.screen.query_one("#dialog")
        assert dialog.region.right <= size[0] and dialog.region.bottom <= size[1]
        for label in app.screen.query(Label):  # wrapped inside the dialog, not cut at its edge
            assert label.region.right <= dialog.content_region.right
        await pilot.press("q")  # closes it and asks
        await wait_until(pilot, lambda: isinstance(app.screen, QuitScreen))
        assert not any(isinstance(screen, ComparisonScreen) for screen in app.screen_stack)


# --- silent stretches: the recovery's first validation ------------------------------------------
#: What follows a validation's progress: its perplexity, then training.
AFTER_VALIDATION = (recovery_events.RecoveryValidated, recovery_events.RecoveryStep)


def validation_activity(event) -> bool:
    return isinstance(event, ev.Activity) and event.kind is ev.ActivityKind.VALIDATION


def validating(app: MptuiApp) -> tuple[int, int] | None:
    return app.state.recovery.validating if app.state.recovery is not None else None


async def test_the_first_validation_shows_its_progress(llama, calibration_file, tmp_path):
    prune = PruneSettings.with_distribution(
        0.2, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32), mlp_group=40
    )
    request = RunRequest(str(llama), prune, cache_dir=tmp_path)
    (tmp_path / "session").mkdir()
    engine = Engine(request, linger=True, session_dir=tmp_path / "session")
    recovery = RecoverySettings(
        data=str(calibration_file), steps=4, batch_size=2, grad_accum=1, seqlen=32,
        eval_every=4, save_every=4, val_examples=4,
    )  # fmt: skip
    app = MptuiApp(engine, gpu_reader=NoGpu(), user_theme_dir=tmp_path / "themes",
                   recovery=recovery)  # fmt: skip
    seen: list = []
    engine.subscribe(seen.append)
    hold = Hold(validation_activity)  # held as the first validation starts
    engine.subscribe(hold)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: app.state.finished == "done")
            await pilot.press("r")
            await wait_until(pilot, lambda: hold.reached.is_set() and validating(app))
            await wait_until(pilot, lambda: "validating the pruned model" in status_text(app))
            assert app.state.recovery.validating == (0, 4)
            assert "⧗ validating the pruned model 0%" in status_text(app)
            assert "validating 0%" in str(app.recovery.border_subtitle)
            assert app.state.recovery.validation == []  # nothing else shows it is working
            hold.release()
            await wait_until(pilot, lambda: app.state.recovery.finished == "done")
            assert app.state.recovery.validating is None
            assert "validating" not in status_text(app)
    finally:
        hold.release()
    told = [e for e in seen if validation_activity(e) or isinstance(e, AFTER_VALIDATION)]
    first = told[: next(i for i, e in enumerate(told) if isinstance(e, AFTER_VALIDATION))]
    assert [(e.done, e.total) for e in (first[0], first[-1])] == [(0, 4), (4, 4)]
    assert [e.done for e in first] == sorted(e.done for e in first)  # it only goes forward
    validated = told[len(first)]
    assert isinstance(validated, recovery_events.RecoveryValidated) and validated.step == 0
    assert not any(
        isinstance(e, recovery_events.RecoveryStep) for e in seen[: seen.index(validated)]
    )


# --- a target below the smallest structure -----------------------------------------------------
async def test_a_target_below_the_smallest_structure_says_it_was_overshot(
    llama, calibration_file, tmp_path
):
    settings = PruneSettings.with_distribution(
        0.001, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32),
        mlp_group=40,
    )  # fmt: skip
    engine = Engine(RunRequest(str(llama), settings, cache_dir=tmp_path), linger=True)
    seen: list = []
    engine.subscribe(seen.append)
    notes: list[str] = []
    app = MptuiApp(engine, gpu_reader=NoGpu(), user_theme_dir=tmp_path / "themes")
    notify = app.notify
    app.notify = lambda message, **options: (notes.append(message), notify(message, **options))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.state.finished == "done")
        await pilot.pause()
        loaded = next(e for e in seen if isinstance(e, ev.Loaded))
        scored = [e for e in seen if isinstance(e, ev.CandidateScored)]
        smallest = min(e.params_freed for e in scored) / loaded.params_dense
        ratio = app.engine.pruning.ratio()
        assert len(steps(app)) == 1 and 0.001 < smallest <= ratio
        sentence = (
            f"target 0.10% reached at {ratio:.2%}: the smallest structure removes {smallest:.2%}"
        )
        assert sentence in notes
        status = status_text(app)
        assert f"overshot: smallest structure removes {smallest:.2%}" in status
        assert max(cell_len(line) for line in status.splitlines()) <= 80
