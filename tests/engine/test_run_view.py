"""The one reducer of a run's events: what it says about the run's modes, that it loads no
torch, and that the server ends a lingering run as it says."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading

from app_replay import Publisher, fixed_run_events
from test_server import wait_until

from mptui.engine.api import ActivityKind, EngineServer, EngineState, RunView, attach
from mptui.engine.api import commands as cmd
from mptui.engine.api import events as ev
from mptui.engine.api import recovery_events as rev


def folded(*events: ev.Event) -> RunView:
    view = RunView()
    for event in events:
        view.apply(event)
    return view


def test_importing_the_reducer_and_the_served_side_loads_no_torch(tmp_path):
    modules = ["run_view", "snapshot", "command_table", "server", "remote", "wire"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module('mptui.engine.control.' + name)\n"
        "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert "LOADED []" in result.stdout, result.stdout + result.stderr


def test_a_proposal_stands_while_waiting_or_paused_and_goes_with_the_step():
    proposal = ev.Proposal(4, "L1.mlp-46", 46.2)
    waiting = folded(proposal, ev.StateChanged(EngineState.WAITING))
    assert waiting.proposal == proposal
    waiting.apply(ev.StateChanged(EngineState.PAUSED))
    assert waiting.proposal == proposal and waiting.paused
    waiting.apply(ev.StateChanged(EngineState.RUNNING))
    assert waiting.proposal is None
    undone = folded(proposal, ev.StepUndone(3, "L2.mlp-46", 44.8, 0.125))
    assert undone.proposal is None


def test_activities_are_told_apart_by_kind_not_label():
    export = folded(ev.Activity(ActivityKind.EXPORT, "writing shards", 1, 3))
    assert export.busy and export.exporting
    evaluation = folded(ev.Activity(ActivityKind.EVALUATION, "exporting? no: evaluating"))
    assert evaluation.busy and not evaluation.exporting
    over = folded(ev.Activity(ActivityKind.EXPORT, "writing shards"), ev.Activity(None))
    assert over.activity is None and not over.busy


def test_a_recovery_is_a_mode_of_its_own_and_keeps_the_run_busy():
    view = folded(ev.Finished("done", {}), ev.StateChanged(EngineState.DONE))
    assert view.search_over and not view.busy and view.finished == "done"
    for state in (EngineState.RECOVERING, EngineState.RECOVERY_PAUSED):
        view.apply(ev.StateChanged(state))
        assert view.recovering and view.busy
    assert view.paused
    view.apply(ev.StateChanged(EngineState.DONE))
    assert not view.recovering and not view.busy


def test_guided_mode_is_the_engines_last_word():
    assert folded(ev.GuidedChanged(True)).guided
    assert not folded(ev.GuidedChanged(True), ev.GuidedChanged(False)).guided


def test_a_lingering_run_ends_only_once_its_recovery_is_over(tmp_path):
    """The server asks the view: a recovery under way keeps an unwatched run alive; once it is
    done, the server sends the Stop."""
    engine = Publisher()
    server = EngineServer(engine, tmp_path, linger=True)
    server.start()
    try:
        client = attach(str(tmp_path))
        client.start()
        wait_until(lambda: len(server._clients) == 1)
        engine.emit(ev.Finished("done", {}))
        engine.emit(ev.StateChanged(EngineState.RECOVERING))
        engine.emit(rev.RecoveryStarted(0, 4, 10, 100, 8, 2, {}))
        client.close()
        wait_until(lambda: not server._clients)
        handled = threading.Event()  # the server's thread has handled all of the above
        server._loop.call_soon_threadsafe(handled.set)
        assert handled.wait(5) and engine.received == []
        engine.emit(rev.RecoveryFinished("done", 4, 4))
        engine.emit(ev.StateChanged(EngineState.DONE))
        assert engine.got_command.wait(5) and engine.received == [cmd.Stop()]
    finally:
        server.close()


def test_a_resumed_session_counts_its_steps_before_any_step_starts():
    """A resumed recovery starts no step: its status shows the steps the search removed."""
    loaded = next(e for e in fixed_run_events() if isinstance(e, ev.Loaded))
    steps = tuple(e.step for e in fixed_run_events() if isinstance(e, ev.StepCommitted))
    view = folded(dataclasses.replace(loaded, steps=steps))
    assert view.step == 3 and [s.index for s in view.steps] == [1, 2, 3]
    view.apply(ev.StepStarted(4, "mlp_channels", ("L0.mlp-46",), 45.6))
    assert view.step == 4
