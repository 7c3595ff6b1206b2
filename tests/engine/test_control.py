"""The control API on a real engine thread: pause, override, order, undo, guided, stop, errors."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import DeviceFault, weights_file

from mptui.engine.api import (
    CalibrationSpec,
    Engine,
    Part,
    Plan,
    PlanStep,
    PruneSettings,
    RunRequest,
    Structure,
)
from mptui.engine.control import commands as cmd
from mptui.engine.control import events as ev

TIMEOUT = 60


class EventLog:
    """Collects events from the engine thread; tests wait on conditions over them."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self._changed = threading.Condition()

    def __call__(self, event: ev.Event) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def of(self, kind) -> list:
        with self._changed:
            return [e for e in self.events if isinstance(e, kind)]

    def wait_for(self, predicate, timeout: float = TIMEOUT):
        with self._changed:
            assert self._changed.wait_for(lambda: predicate(self), timeout), self.summary()

    def wait_count(self, kind, count: int) -> None:
        self.wait_for(lambda log: len(log.of(kind)) >= count)

    def state(self) -> str | None:
        states = self.of(ev.StateChanged)
        return states[-1].state if states else None

    def summary(self) -> str:
        return ", ".join(type(e).__name__ for e in self.events[-30:])


def make_engine(
    path, calibration_file, tmp_path, *, linger: bool = False, session_dir=None, **settings
) -> tuple[Engine, EventLog]:
    """A tiny run (32-token rows) and the log of its events; ``linger``: the engine stays after
    its search, as the app's does."""
    options = {"target_ratio": 0.35, "mlp_group": 40, "batch_size": 2} | settings
    target = options.pop("target_ratio")
    run_settings = PruneSettings.with_distribution(
        target,
        options.pop("distribution", "30:40:30"),
        options.pop("order", "blocks,mlp_channels,attn_heads"),
        calibration=CalibrationSpec(str(calibration_file), 0, 32),
        **options,
    )
    log = EventLog()
    request = RunRequest(str(path), run_settings, cache_dir=tmp_path)
    engine = Engine(request, [log], linger=linger, session_dir=session_dir)
    return engine, log


@pytest.fixture
def llama(tiny_model_dir):
    return tiny_model_dir("llama")


def idle_since(engine: Engine, log: EventLog, since: int) -> list[ev.Event]:
    """Proof, without a clock, that the engine does no work while it holds (paused, waiting):
    two commands that it only answers with a notice (an override of no structure), the second
    sent once the first is answered. An engine that went back to work after the first would
    score a candidate before it reads the second. Returns the events from ``since`` on."""
    for answered in (1, 2):
        engine.send(cmd.Override("no-such-structure"))
        log.wait_for(lambda log, n=answered: len(ignored_overrides(log.events[since:])) == n)
    return log.events[since:]


def ignored_overrides(events: list[ev.Event]) -> list[ev.Notice]:
    return [e for e in events if isinstance(e, ev.Notice) and "override ignored" in e.message]


def worked(events: list[ev.Event]) -> list[ev.Event]:
    return [e for e in events if isinstance(e, (ev.CandidateScored, ev.StepCommitted))]


def finish(engine: Engine, log: EventLog) -> ev.Finished:
    log.wait_count(ev.Finished, 1)
    assert engine.join(TIMEOUT)
    return log.of(ev.Finished)[0]


def ending(log: EventLog) -> list[str]:
    """The states of an ended run from the one its search ended in (just before ``Finished``);
    the very last event is always ``StateChanged(ended)``."""
    assert isinstance(log.events[-1], ev.StateChanged), log.summary()
    end = log.events.index(log.of(ev.Finished)[0]) - 1
    return [e.state for e in log.events[end:] if isinstance(e, ev.StateChanged)]


def test_pause_stops_commits_within_one_candidate(llama, calibration_file, tmp_path):
    engine, log = make_engine(llama, calibration_file, tmp_path)
    engine.start()
    log.wait_count(ev.StepCommitted, 1)
    scored_before = len(log.of(ev.CandidateScored))
    engine.send(cmd.Pause())
    log.wait_for(lambda log: log.state() == "paused")
    assert len(log.of(ev.CandidateScored)) - scored_before <= 1
    commits = len(log.of(ev.StepCommitted))
    paused_at = len(log.events)
    assert worked(idle_since(engine, log, paused_at)) == []
    assert log.state() == "paused"
    engine.send(cmd.Resume())
    assert finish(engine, log).reason == "done"
    assert len(log.of(ev.StepCommitted)) > commits


def test_override_commits_the_users_choice(llama, calibration_file, tmp_path):
    engine, log = make_engine(llama, calibration_file, tmp_path)
    engine.send(cmd.Pause())  # paused before the first step
    engine.start()
    log.wait_for(lambda log: log.state() == "paused")
    engine.send(cmd.Override("L3.mlp-40"))  # a width structure while blocks would run
    engine.send(cmd.Resume())
    plan = finish(engine, log).plan
    first = plan["steps"][0]
    assert first["structure"] == {
        "kind": "mlp_channels",
        "layer": 3,
        "remove": 40,
        "width_after": 136,
    }
    assert first["chosen_by"] == "user"
    assert all(step["chosen_by"] == "engine" for step in plan["steps"][1:])


def test_order_change_changes_the_next_dimension(llama, calibration_file, tmp_path):
    engine, log = make_engine(llama, calibration_file, tmp_path)
    engine.send(cmd.Pause())
    engine.start()
    log.wait_for(lambda log: log.state() == "paused")
    engine.send(cmd.SetOrder(("attn_heads", "blocks", "mlp_channels")))
    engine.send(cmd.Resume())
    plan = finish(engine, log).plan
    assert plan["steps"][0]["dimension"] == "attn_heads"
    assert plan["settings"]["order"] == ["attn_heads", "blocks", "mlp_channels"]
    # the shares moved with their dimensions: heads keep 30% of the target
    assert plan["settings"]["distribution"] == pytest.approx([0.3, 0.3, 0.4])


def test_guided_mode_waits_and_undo_restores_the_model(llama, calibration_file, tmp_path):
    engine, log = make_engine(llama, calibration_file, tmp_path, guided=True)
    engine.start()
    log.wait_count(ev.Proposal, 1)
    assert log.state() == "waiting"
    waiting_at = len(log.events)
    assert worked(idle_since(engine, log, waiting_at)) == []  # nothing while the engine waits
    assert not log.of(ev.StepCommitted) and log.state() == "waiting"
    ids = torch.randint(0, 500, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = engine.pruning.model(ids).logits.clone()
    engine.send(cmd.Accept())
    log.wait_count(ev.Proposal, 2)
    assert log.of(ev.StepCommitted)[0].step.chosen_by == "engine"
    engine.send(cmd.Undo())
    log.wait_count(ev.StepUndone, 1)
    log.wait_count(ev.Proposal, 3)
    with torch.inference_mode():
        after = engine.pruning.model(ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert engine.pruning.steps == []
    assert log.of(ev.Proposal)[2].structure == log.of(ev.Proposal)[0].structure
    engine.send(cmd.SetGuided(False))
    assert finish(engine, log).reason == "done"


def test_stop_ends_cleanly(llama, calibration_file, tmp_path):
    engine, log = make_engine(llama, calibration_file, tmp_path)
    engine.start()
    log.wait_count(ev.CandidateScored, 2)
    engine.send(cmd.Stop())
    assert finish(engine, log).reason == "stopped"
    assert ending(log) == ["stopped", "ended"]


def test_an_error_becomes_an_event_and_a_clean_stop(llama, tmp_path):
    engine, log = make_engine(llama, tmp_path / "missing.txt", tmp_path)
    engine.start()
    result = finish(engine, log)
    assert result.reason == "error"
    (error,) = log.of(ev.Error)
    assert "missing.txt" in error.message
    assert ending(log) == ["error", "ended"] and engine.state is ev.EngineState.ENDED


def test_events_carry_no_tensors(llama, calibration_file, tmp_path):
    engine, log = make_engine(llama, calibration_file, tmp_path)
    engine.run()
    assert ending(log) == ["done", "ended"]

    def plain(value) -> bool:
        if isinstance(value, (str, int, float, bool, type(None))):
            return True
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        if isinstance(value, dict):
            return all(plain(k) and plain(v) for k, v in value.items())
        if isinstance(value, (PlanStep, Structure, Part)):  # torch-free values: plan, message
            return plain(list(vars(value).values()))
        return False

    for event in log.events:
        assert plain(list(vars(event).values())), event
    kinds = {type(e) for e in log.events}
    assert {
        ev.Loaded,
        ev.CandidateScored,
        ev.Progress,
        ev.StepCommitted,
        ev.MemorySample,
        ev.DimensionChanged,
        ev.Finished,
    } <= kinds
    progress = log.of(ev.Progress)[0]
    assert progress.n > 0 and progress.tokens_per_s > 0
    (finished,) = log.of(ev.Finished)  # each commit carried its plan.json entry, typed
    assert [e.step for e in log.of(ev.StepCommitted)] == Plan.from_dict(finished.plan).steps


def test_export_and_evaluate_mid_run_leave_the_search_unchanged(llama, calibration_file, tmp_path):
    """Paused after a commit: an evaluation (dense and pruned) and an export, then the run goes
    on and ends with exactly the plan of a run that was never interrupted."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mptui.engine.output.evaluate import EvalRequest, rolling_perplexity

    engine, log = make_engine(llama, calibration_file, tmp_path)
    engine.send(cmd.Pause())  # paused before the first step
    engine.start()
    log.wait_for(lambda log: log.state() == "paused")
    engine.send(cmd.Override("L2.mlp"))
    engine.send(cmd.Resume())
    log.wait_count(ev.StepCommitted, 1)
    engine.send(cmd.Pause())
    log.wait_for(lambda log: log.state() == "paused")
    request = EvalRequest(text=str(calibration_file), seqlen=32)
    engine.send(cmd.Evaluate(request))
    engine.send(cmd.Export(str(tmp_path / "export")))
    log.wait_count(ev.Exported, 1)
    evaluated, exported = log.of(ev.Evaluated)[0], log.of(ev.Exported)[0]
    steps_then = evaluated.steps
    dense = AutoModelForCausalLM.from_pretrained(llama).eval()
    tokenizer = AutoTokenizer.from_pretrained(llama)
    text = calibration_file.read_text()
    assert evaluated.dense["perplexity"] == pytest.approx(
        rolling_perplexity(dense, tokenizer, text, 32), rel=1e-5
    )
    pruned = AutoModelForCausalLM.from_pretrained(exported.path, trust_remote_code=True)
    assert evaluated.pruned["perplexity"] == pytest.approx(
        rolling_perplexity(pruned, tokenizer, text, 32), rel=1e-5
    )
    assert evaluated.pruned["perplexity"] != evaluated.dense["perplexity"]
    assert pruned.num_parameters() == exported.params == log.of(ev.StepCommitted)[-1].params
    assert [a.label for a in log.of(ev.Activity)][-1] == ""
    engine.send(cmd.Resume())
    steps = finish(engine, log).plan["steps"]
    assert steps_then >= 1 and steps[0]["structure"] == {"kind": "mlp_block", "layer": 2}
    # from the same first step on, the uninterrupted search makes the same choices
    rerun, rerun_log = make_engine(llama, calibration_file, tmp_path)
    rerun.send(cmd.Override("L2.mlp"))
    rerun.start()
    expected = finish(rerun, rerun_log).plan["steps"]
    assert [s["structure"] for s in steps] == [s["structure"] for s in expected]
    assert [s["score"] for s in steps] == pytest.approx([s["score"] for s in expected], rel=1e-6)


def test_a_lingering_engine_answers_exports_after_the_search_until_stopped(
    llama, calibration_file, tmp_path
):
    engine, log = make_engine(llama, calibration_file, tmp_path)
    engine.linger = True
    engine.start()
    log.wait_count(ev.Finished, 1)
    engine.send(cmd.Undo())
    engine.send(cmd.Export(str(tmp_path / "after")))
    log.wait_count(ev.Exported, 1)
    assert "the run is finished" in log.of(ev.Notice)[-1].message
    assert weights_file(tmp_path / "after").is_file()
    assert not engine.join(0.2)  # still serving
    engine.send(cmd.Stop())
    assert engine.join(TIMEOUT)
    assert ending(log) == ["done", "ended"]


def test_a_failure_while_lingering_ends_the_engine_after_an_error_state(
    llama, calibration_file, tmp_path
):
    """A lost device while a lingering engine evaluates after its search: nothing more is
    served, and the last word is the failure (ERROR), then that the engine has ended."""
    from mptui.engine.output.evaluate import EvalRequest

    engine, log = make_engine(llama, calibration_file, tmp_path, linger=True)
    fault = DeviceFault()
    with fault.installed():
        engine.start()
        log.wait_count(ev.Finished, 1)
        fault.armed = True  # the evaluation's first forward
        engine.send(cmd.Evaluate(EvalRequest(text=str(calibration_file), seqlen=32)))
        assert engine.join(TIMEOUT)
    assert fault.fired == 1 and "the GPU failed" in log.of(ev.Error)[0].message
    assert ending(log) == ["done", "error", "ended"]


def test_a_failed_evaluation_is_a_warning_and_the_run_goes_on(llama, calibration_file, tmp_path):
    from mptui.engine.output.evaluate import EvalRequest

    engine, log = make_engine(llama, calibration_file, tmp_path)
    engine.send(cmd.Pause())
    engine.start()
    log.wait_for(lambda log: log.state() == "paused")
    engine.send(cmd.Evaluate(EvalRequest(text=str(tmp_path / "missing.txt"))))
    engine.send(cmd.Resume())
    assert finish(engine, log).reason == "done"
    assert any("evaluation failed" in w.message for w in log.of(ev.Notice))


def test_stop_cuts_a_long_evaluation_short(llama, calibration_file, tmp_path, local_task):
    """A dropped SSH link (SIGHUP -> Stop) must not wait for an hour of lm-eval."""
    from mptui.engine.output.evaluate import EvalRequest

    engine, log = make_engine(llama, calibration_file, tmp_path)
    engine.send(cmd.Pause())
    engine.start()
    log.wait_for(lambda log: log.state() == "paused")
    engine.send(cmd.Evaluate(EvalRequest(("mptui_mini",), str(local_task), seqlen=32)))
    engine.send(cmd.Stop())  # raised at lm-eval's first batch
    assert finish(engine, log).reason == "stopped"
    assert not log.of(ev.Evaluated)
    assert any("evaluation cancelled" in w.message for w in log.of(ev.Notice))
    assert [a.label for a in log.of(ev.Activity)][-1] == ""


def test_a_pause_sent_with_recover_holds_the_recovery_before_its_first_step(
    llama, calibration_file, tmp_path
):
    """r then space at once in the app: both commands reach an engine that lingers after its
    search (DONE). The Pause waits behind the Recover, whose handler runs the whole recovery,
    and is read by the recovery's first poll: training pauses before its first optimizer step,
    never refused as if the run were over. Once the recovery is over, a Pause is refused."""
    from mptui.engine.api import RecoverySettings, recovery_events

    engine, log = make_engine(
        llama, calibration_file, tmp_path, linger=True, session_dir=tmp_path / "session",
        target_ratio=0.2,
    )  # fmt: skip
    recovery = RecoverySettings(
        data=str(calibration_file), steps=4, batch_size=2, grad_accum=1, seqlen=32,
        eval_every=4, save_every=4, val_examples=4,
    )  # fmt: skip
    engine.start()
    try:
        log.wait_count(ev.Finished, 1)
        engine.send(cmd.Recover(recovery))
        engine.send(cmd.Pause())
        log.wait_for(lambda log: log.state() == "recovery_paused")
        assert log.of(recovery_events.RecoveryStarted) and not log.of(recovery_events.RecoveryStep)
        paused_at = len(log.events)
        assert not any(
            isinstance(e, recovery_events.RecoveryStep)
            for e in recovery_idle_since(engine, log, paused_at)
        )
        engine.send(cmd.Resume())
        log.wait_count(recovery_events.RecoveryFinished, 1)
        assert log.of(recovery_events.RecoveryFinished)[0].reason == "done"
        log.wait_for(lambda log: log.state() == "done")
        engine.send(cmd.Pause())  # too late: nothing is left to pause
        log.wait_for(lambda log: log.of(ev.Notice) and "finished" in log.of(ev.Notice)[-1].message)
        assert engine.recovery.step == 4
    finally:
        engine.send(cmd.Stop())
        assert engine.join(TIMEOUT)


def recovery_idle_since(engine: Engine, log: EventLog, since: int) -> list[ev.Event]:
    """Proof, without a clock, that a paused recovery holds: two commands it only answers with a
    notice, the second sent once the first is answered (training that went on would take a step
    between the two). Returns the events from ``since`` on."""
    for answered in (1, 2):
        engine.send(cmd.Override("no-such-structure"))
        log.wait_for(lambda log, n=answered: len(recovery_refusals(log.events[since:])) == n)
    return log.events[since:]


def recovery_refusals(events: list[ev.Event]) -> list[ev.Notice]:
    return [e for e in events if isinstance(e, ev.Notice) and e.message.startswith("recovering:")]
