"""The app's keys over the real engine in the cases that used to hang (guided mode and pause)."""

from __future__ import annotations

import pytest
from test_app import engine_idle, make_app, wait_until

from mptui.app.app import MptuiApp
from mptui.engine.api import events as ev


def commits(app: MptuiApp) -> int:
    return len(app.engine.pruning.steps) if app.engine.pruning else 0


@pytest.fixture
def llama(tiny_model_dir):
    return tiny_model_dir("llama")


async def test_pause_then_accept_commits_and_space_resumes(llama, calibration_file, tmp_path):
    app = make_app(llama, calibration_file, tmp_path, guided=True)
    seen: list = []
    app.engine.subscribe(seen.append)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.state.proposal is not None)
        await pilot.press("space")
        await wait_until(pilot, lambda: app.state.state == "paused")
        assert app.state.proposal is not None  # still shown while paused
        await pilot.press("a")
        await wait_until(pilot, lambda: commits(app) == 1)
        since_paused = await engine_idle(pilot, app, seen)  # accepted, and still paused
        assert [e.state for e in since_paused if isinstance(e, ev.StateChanged)] == ["paused"]
        await wait_until(pilot, lambda: len(app.state.curve) == 2)  # the app shows the commit
        assert app.state.state_label == "PAUSED"
        await pilot.press("space")  # resumes (it used to send Pause again)
        await wait_until(pilot, lambda: app.state.state == "waiting" and app.state.proposal)
        assert commits(app) == 1
        await pilot.press("a")
        await wait_until(pilot, lambda: commits(app) == 2)


async def test_pause_then_resume_while_waiting_keeps_the_proposal(
    llama, calibration_file, tmp_path
):
    app = make_app(llama, calibration_file, tmp_path, guided=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.state.proposal is not None)
        proposal = app.state.proposal
        await pilot.press("space")
        await wait_until(pilot, lambda: app.state.state == "paused")
        await pilot.press("space")
        await wait_until(pilot, lambda: app.state.state == "waiting")
        assert app.state.proposal == proposal
        await pilot.press("a")  # it used to do nothing: the engine waited forever
        await wait_until(pilot, lambda: commits(app) == 1)


async def test_keys_while_paused_act_at_once(llama, calibration_file, tmp_path):
    app = make_app(llama, calibration_file, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: commits(app) >= 2)
        await pilot.press("space")
        await wait_until(pilot, lambda: app.state.state == "paused")
        before = commits(app)
        await pilot.press("u")
        await wait_until(pilot, lambda: commits(app) == before - 1)
        await pilot.press("u")
        await wait_until(pilot, lambda: commits(app) == before - 2)
        assert app.state.state == "paused" and app.state.error is None
        await pilot.press("space")
        await wait_until(pilot, lambda: app.state.finished == "done")
        assert app.state.error is None


async def test_a_resumed_session_shows_what_it_had_removed(llama, calibration_file, tmp_path):
    import dataclasses

    from mptui.engine.api import PlanStep, commands

    first = make_app(llama, calibration_file, tmp_path)
    first.engine.linger = False
    plan = first.engine.run().plan
    steps = tuple(PlanStep.from_dict(step) for step in plan["steps"][:3])
    app = make_app(llama, calibration_file, tmp_path)
    app.engine.request = dataclasses.replace(app.engine.request, resume_steps=steps)
    app.engine.send(commands.Pause())
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: app.state.state == "paused")
        assert [s.structure for s in app.state.steps] == [s.structure for s in steps]
        assert app.state.ratio == steps[-1].ratio and len(app.state.curve) == 4
        removed = {s.structure.layer for s in steps if s.structure.is_block}
        for layer in removed:
            row = app.state.layers[layer]
            assert row.attn_removed or row.mlp_removed
