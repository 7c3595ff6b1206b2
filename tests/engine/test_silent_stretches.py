"""Progress where the engine used to say nothing for minutes on a 7B: the perplexity part of an
evaluation, and a recovery's validations (the first one before any optimizer step). Also the
overshoot line of a target below the smallest structure, and what a late attacher is told."""

from __future__ import annotations

import json

import pytest
from test_control import EventLog, make_engine
from transformers import AutoModelForCausalLM, AutoTokenizer

from mptui.engine.api import (
    CalibrationSpec,
    Engine,
    PruneSettings,
    RecoverySettings,
    RunRequest,
    RunView,
)
from mptui.engine.control import commands as cmd
from mptui.engine.control import events as ev
from mptui.engine.errors import Cancelled
from mptui.engine.model.adapters import adapter_for
from mptui.engine.output.evaluate import EvalRequest, evaluate, perplexity_rows, rolling_perplexity
from mptui.engine.recovery import events as rev
from mptui.engine.recovery import run as recovery_run
from mptui.engine.search.plan import read_plan_file
from mptui.engine.search.scoring import Scorer
from mptui.engine.session import files as session_files


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dir):
    path = tiny_model_dir("llama")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_the_perplexity_part_reports_each_row_and_scores_as_before(tiny_llama, calibration_file):
    model, tokenizer = tiny_llama
    text = calibration_file.read_text()
    rows = len(perplexity_rows(tokenizer, text, 32))
    seen: list[tuple[int, int]] = []
    result = evaluate(
        model, tokenizer, EvalRequest(text=str(calibration_file), seqlen=32),
        progress=lambda *p: seen.append(p),
    )  # fmt: skip
    assert rows > 2 and seen == [(done, rows) for done in range(rows + 1)]
    whole = Scorer(
        model, adapter_for(model), perplexity_rows(tokenizer, text, 32), batch_size=1,
        prefix_cache=False,
    ).score()  # fmt: skip
    assert result["perplexity"] == pytest.approx(whole, rel=1e-12)  # row by row: same number
    assert rolling_perplexity(model, tokenizer, text, 32) == result["perplexity"]


def test_a_stop_is_seen_between_two_rows(tiny_llama, calibration_file):
    model, tokenizer = tiny_llama
    seen: list[tuple[int, int]] = []
    with pytest.raises(Cancelled):
        evaluate(
            model, tokenizer, EvalRequest(text=str(calibration_file), seqlen=32),
            cancelled=lambda: len(seen) >= 2, progress=lambda *p: seen.append(p),
        )  # fmt: skip
    assert [done for done, _total in seen] == [0, 1]  # the third row never started


def test_tasks_then_perplexity_are_one_count_that_never_goes_back(
    tiny_llama, calibration_file, local_task
):
    model, tokenizer = tiny_llama
    rows = len(perplexity_rows(tokenizer, calibration_file.read_text(), 32))
    request = EvalRequest(("mptui_mini",), str(local_task), text=str(calibration_file), seqlen=32)
    seen: list[tuple[int, int]] = []
    result = evaluate(model, tokenizer, request, progress=lambda *p: seen.append(p))
    total = seen[-1][1]
    assert set(result) == {"zero_shot", "perplexity"}
    assert all(t == total for _done, t in seen) and seen[-1] == (total, total)
    assert [done for done, _t in seen] == sorted(done for done, _t in seen)
    tail = [done for done, _t in seen[-(rows + 1) :]]
    assert tail == list(range(total - rows, total + 1))  # the text's rows, one by one, last


def test_an_evaluation_in_the_engine_shows_the_perplexity_rows(
    tiny_model_dir, calibration_file, tmp_path
):
    engine, log = make_engine(tiny_model_dir("llama"), calibration_file, tmp_path)
    engine.send(cmd.Pause())
    engine.start()
    log.wait_for(lambda log: log.state() == "paused")
    engine.send(cmd.Evaluate(EvalRequest(text=str(calibration_file), seqlen=32)))
    log.wait_count(ev.Evaluated, 1)
    engine.send(cmd.Stop())
    assert engine.join(60)
    counted = [a for a in log.of(ev.Activity) if a.kind is ev.ActivityKind.EVALUATION and a.total]
    for model in ("the dense model", "the pruned model"):
        mine = [a for a in counted if a.label == f"evaluating {model}"]
        assert mine and mine[-1].done == mine[-1].total > 0  # the last always comes


def test_every_validation_reports_its_examples_before_its_perplexity(
    tiny_model_dir, calibration_file, tmp_path, monkeypatch
):
    monkeypatch.setattr(recovery_run, "VALIDATION_PROGRESS_INTERVAL", 0.0)  # every micro-batch
    prune = PruneSettings.with_distribution(
        0.2, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32), mlp_group=40
    )
    request = RunRequest(str(tiny_model_dir("llama")), prune, cache_dir=tmp_path)
    log = EventLog()
    engine = Engine(request, [log], linger=True, session_dir=tmp_path)
    engine.start()
    log.wait_for(lambda log: log.of(ev.Finished))
    settings = RecoverySettings(
        data=str(calibration_file), steps=4, batch_size=2, grad_accum=1, seqlen=32,
        eval_every=2, save_every=4, val_examples=4,
    )  # fmt: skip
    engine.send(cmd.Recover(settings))
    log.wait_for(lambda log: log.of(rev.RecoveryFinished))
    engine.send(cmd.Stop())
    assert engine.join(60)
    started = next(i for i, e in enumerate(log.events) if isinstance(e, rev.RecoveryStarted))
    told: list = []
    for event in log.events[started:]:
        if isinstance(event, ev.Activity):
            assert event.kind in (None, ev.ActivityKind.VALIDATION)
            told.append((event.label, event.done, event.total) if event.kind else "over")
        elif isinstance(event, (rev.RecoveryValidated, rev.RecoveryStep)):
            told.append(type(event).__name__)

    def validation(label: str) -> list:
        """Held-out examples done of all, micro-batch by micro-batch, then the perplexity."""
        return [(label, 0, 4), (label, 2, 4), (label, 4, 4), "over", "RecoveryValidated"]

    steps = ["RecoveryStep", "RecoveryStep"]
    assert told == [
        *validation("validating the pruned model"), *steps,
        *validation("validating at step 2"), *steps, *validation("validating at step 4"),
    ]  # fmt: skip


def test_a_late_attacher_is_told_a_validation_is_under_way():
    validating = ev.Activity(ev.ActivityKind.VALIDATION, "validating the pruned model", 3, 8)
    view = RunView()
    for event in (
        ev.Finished("done", {}), ev.StateChanged("recovering"),
        rev.RecoveryStarted(0, 300, 1000, 2_000_000, 100, 8, {}), validating,
    ):  # fmt: skip
        view.apply(event)
    assert view.recovery.validating == (3, 8) and view.busy and not view.evaluating
    late = RunView()
    late.apply(rev.RecoveryStarted(0, 300, 1000, 2_000_000, 100, 8, {}))  # from the history
    for event in view.replay_tail():
        late.apply(event)
    assert late.recovery.validating == (3, 8) and late.activity == validating
    view.apply(ev.Activity(None))
    view.apply(rev.RecoveryValidated(0, 65.4))
    assert view.recovery.validating is None and view.activity is None


def overshoot_of(target: float, ratio: float, smallest: int, dense: int = 1000) -> str | None:
    view = RunView(params_dense=dense, target=target, ratio=ratio)
    view.apply(ev.CandidateScored(1, "blocks", "L0.attn", 40.0, 1.0, smallest, 1, 2))
    view.apply(ev.CandidateScored(1, "blocks", "L0.mlp", 41.0, 2.0, 3 * smallest, 2, 2))
    view.apply(ev.Finished("done", {"steps": []}))
    return view.overshoot


def test_only_a_target_below_the_smallest_structure_is_called_overshot():
    assert overshoot_of(0.001, 0.0123, 12) == (
        "target 0.10% reached at 1.23%: the smallest structure removes 1.20%"
    )
    assert overshoot_of(0.25, 0.2512, 12) is None  # an ordinary last step past the target
    assert overshoot_of(0.01, 0.01, 12) is None  # reached exactly
    view = RunView(params_dense=1000, target=0.001, ratio=0.0123)
    assert view.overshoot is None  # nothing scored, nothing known (a resumed, ended session)


def test_the_headless_output_says_the_target_was_overshot(
    tiny_model_dir, calibration_file, tmp_path, capsys
):
    from mptui.cli import main

    session = tmp_path / "session"
    argv = [
        str(tiny_model_dir("llama")), "--headless", "--calibration", str(calibration_file),
        "--seqlen", "32", "--nsamples", "2", "--target-ratio", "0.001", "--session", str(session),
    ]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    plan = read_plan_file(session / session_files.PLAN)
    logged = [json.loads(line) for line in (session / session_files.EVENTS).open()]
    dense = next(e["params_dense"] for e in logged if e["event"] == "Loaded")
    freed = [e["params_freed"] for e in logged if e["event"] == "CandidateScored"]
    smallest = min(freed) / dense
    assert len(plan.steps) == 1 and 0.001 < smallest <= plan.ratio
    line = (
        f"target 0.10% reached at {plan.ratio:.2%}: the smallest structure removes {smallest:.2%}"
    )
    assert line in out
    assert out[out.index(line) + 1] == "finished (done) after 1 steps"


def test_an_ordinary_run_prints_no_overshoot_line(
    tiny_model_dir, calibration_file, tmp_path, capsys
):
    from mptui.cli import main

    argv = [
        str(tiny_model_dir("llama")), "--headless", "--calibration", str(calibration_file),
        "--seqlen", "32", "--nsamples", "2", "--target-ratio", "0.3", "--mlp-group", "40",
        "--session", str(tmp_path / "session"),
    ]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "finished (done)" in out and "reached at" not in out
