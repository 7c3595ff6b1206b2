"""Steering never breaks a run: the engine's state machine on a real tiny model.

Directed tests for each way steering used to fail, then a seeded random driver that throws every
command at the engine at every kind of moment and checks the run's invariants afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import queue
import random

import pytest
import torch
from test_control import EventLog, ending, finish
from transformers import AutoModelForCausalLM, AutoTokenizer

from mptui.engine.api import CalibrationSpec, Engine, PruneSettings, RunRequest
from mptui.engine.control import commands as cmd
from mptui.engine.control import events as ev
from mptui.engine.model.rebuild import apply_plan
from mptui.engine.search.plan import PlanStep
from mptui.engine.search.scoring import Scorer
from mptui.engine.search.structures import DIMENSIONS
from mptui.engine.session.folder import SessionFolder

TIMEOUT = 60


@pytest.fixture(scope="module")
def dense(tiny_model_dir):
    """A tiny llama in memory (each engine gets its own deep copy) and its tokenizer."""
    path = tiny_model_dir("llama", num_layers=3)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    model.requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(path), path


def engine_for(dense, calibration_file, tmp_path, *, linger=False, journal=None, **settings):
    model, tokenizer, path = dense
    options = {"target_ratio": 0.35, "mlp_group": 40, "batch_size": 2} | settings
    run_settings = PruneSettings.with_distribution(
        options.pop("target_ratio"),
        options.pop("distribution", "30:40:30"),
        options.pop("order", "blocks,mlp_channels,attn_heads"),
        calibration=CalibrationSpec(str(calibration_file), 1, 16),
        **options,
    )
    log = EventLog()
    engine = Engine(
        RunRequest(str(path), run_settings, cache_dir=tmp_path),
        [log],
        linger=linger,
        journal=journal,
        loaded=(copy.deepcopy(model), tokenizer),
    )
    return engine, log


def logits(model) -> torch.Tensor:
    ids = torch.randint(0, 500, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        return model(ids).logits


def assert_consistent(engine: Engine, log: EventLog, dense) -> None:
    """The run's invariants: no error; the plan is the commits minus the undos; the live model
    has the plan's parameter count and is exactly the plan re-applied to the dense model."""
    assert not log.of(ev.Error), log.of(ev.Error)
    pruning = engine.pruning
    steps = pruning.steps
    assert len(steps) == len(log.of(ev.StepCommitted)) - len(log.of(ev.StepUndone))
    assert [s.index for s in steps] == list(range(1, len(steps) + 1))
    expected_params = steps[-1].params if steps else pruning.params_dense
    assert pruning.model.num_parameters() == expected_params == pruning.params
    fresh = copy.deepcopy(dense[0])
    apply_plan(fresh, pruning.plan())
    assert fresh.num_parameters() == expected_params
    torch.testing.assert_close(logits(fresh), logits(pruning.model), rtol=0, atol=0)


def paused(log: EventLog) -> None:
    log.wait_for(lambda log: log.state() == "paused")


# --- the failures of the issue, one by one ---------------------------------------------------
def test_pause_undo_undo_at_a_step_boundary(dense, calibration_file, tmp_path):
    engine, log = engine_for(dense, calibration_file, tmp_path)
    engine.start()
    log.wait_count(ev.StepCommitted, 2)
    engine.send(cmd.Pause())
    paused(log)
    engine.send(cmd.Undo())
    engine.send(cmd.Undo())
    log.wait_count(ev.StepUndone, 2)
    assert log.state() == "paused"  # undone at once, still paused
    engine.send(cmd.Resume())
    assert finish(engine, log).reason == "done"
    assert_consistent(engine, log, dense)


def test_commands_while_paused_take_effect_at_once(dense, calibration_file, tmp_path):
    engine, log = engine_for(dense, calibration_file, tmp_path)
    engine.send(cmd.Pause())
    engine.start()
    paused(log)
    engine.send(cmd.Override("L1.mlp"))
    log.wait_count(ev.StepCommitted, 1)
    assert log.of(ev.StepCommitted)[0].step.chosen_by == "user"
    engine.send(cmd.SetOrder(("mlp_channels", "blocks", "attn_heads")))
    log.wait_for(lambda log: any("order is now" in w.message for w in log.of(ev.Notice)))
    assert engine.pruning.settings.order[0] == "mlp_channels"
    engine.send(cmd.Undo())
    log.wait_count(ev.StepUndone, 1)
    engine.send(cmd.Export(str(tmp_path / "export")))
    log.wait_count(ev.Exported, 1)
    assert log.state() == "paused" and not engine.pruning.steps
    assert not log.of(ev.CandidateScored)  # nothing ran but what was asked
    engine.send(cmd.Resume())
    plan = finish(engine, log).plan
    assert plan["steps"][0]["dimension"] == "mlp_channels"
    assert_consistent(engine, log, dense)


def test_invalid_commands_are_warnings_and_change_nothing(dense, calibration_file, tmp_path):
    engine, log = engine_for(dense, calibration_file, tmp_path)
    engine.send(cmd.Pause())
    engine.start()
    paused(log)
    for command in (cmd.Undo(), cmd.Accept(), cmd.Override("L99.attn"), cmd.Override("nope")):
        engine.send(command)
    log.wait_count(ev.Notice, 5)  # the group-size note, then one per command
    messages = [w.message for w in log.of(ev.Notice)[1:]]
    assert messages[0] == "nothing to undo"
    assert "nothing to accept" in messages[1]
    assert "layer 99 does not exist" in messages[2] and "not a structure id" in messages[3]
    assert log.state() == "paused" and not log.of(ev.StepCommitted)
    engine.send(cmd.Stop())
    assert finish(engine, log).reason == "stopped"


def test_guided_pause_then_accept_commits_and_stays_paused(dense, calibration_file, tmp_path):
    engine, log = engine_for(dense, calibration_file, tmp_path, guided=True)
    engine.start()
    log.wait_count(ev.Proposal, 1)
    proposal = log.of(ev.Proposal)[0].structure
    engine.send(cmd.Pause())
    paused(log)
    engine.send(cmd.Accept())
    log.wait_count(ev.StepCommitted, 1)
    assert log.state() == "paused"  # not "running" while still paused
    committed = log.of(ev.StepCommitted)[0].step
    assert committed.chosen_by == "engine"
    assert committed.structure.id == proposal
    engine.send(cmd.Resume())
    log.wait_count(ev.Proposal, 2)  # the next step is scored and proposed
    assert log.state() == "waiting"
    engine.send(cmd.SetGuided(False))
    assert finish(engine, log).reason == "done"
    assert_consistent(engine, log, dense)


def test_guided_pause_then_resume_keeps_the_proposal(dense, calibration_file, tmp_path):
    engine, log = engine_for(dense, calibration_file, tmp_path, guided=True)
    engine.start()
    log.wait_count(ev.Proposal, 1)
    engine.send(cmd.Pause())
    paused(log)
    engine.send(cmd.Resume())
    log.wait_for(lambda log: log.state() == "waiting")
    engine.send(cmd.Accept())  # the proposal is still there to accept
    log.wait_count(ev.StepCommitted, 1)
    committed = log.of(ev.StepCommitted)[0].step
    assert committed.structure.id == log.of(ev.Proposal)[0].structure
    engine.send(cmd.Stop())
    assert finish(engine, log).reason == "stopped"
    assert len(engine.pruning.steps) == 1


def test_override_then_undo_in_one_drain_leaves_no_stale_width(dense, calibration_file, tmp_path):
    engine, log = engine_for(dense, calibration_file, tmp_path)
    engine.send(cmd.Pause())
    engine.start()
    paused(log)
    for command in (cmd.Override("L0.mlp-40"), cmd.Override("L0.mlp-40"), cmd.Undo()):
        engine.send(command)
    engine.send(cmd.Override("L0.mlp-40"))
    engine.send(cmd.Resume())
    plan = finish(engine, log).plan
    assert plan["steps"][1]["structure"] == {
        "kind": "mlp_channels", "layer": 0, "remove": 40, "width_after": 96,
    }  # fmt: skip
    assert_consistent(engine, log, dense)


# --- non-finite scores ------------------------------------------------------------------------
def poisoned(dense, where: str):
    """The dense model with an inf weight: in layer 0's MLP (every candidate that keeps it
    scores NaN) or in the final norm (every candidate does)."""
    model, tokenizer, path = dense
    model = copy.deepcopy(model)
    with torch.no_grad():
        if where == "mlp0":
            model.model.layers[0].mlp.down_proj.weight[0, 0] = math.inf
        else:
            model.model.norm.weight[0] = math.nan
    return model, tokenizer, path


def test_a_nan_candidate_ranks_last_and_is_never_committed(dense, calibration_file, tmp_path):
    model = poisoned(dense, "mlp0")
    engine, log = engine_for(model, calibration_file, tmp_path, target_ratio=0.05,
                             distribution="1:0:0")  # fmt: skip
    plan = engine.run().plan
    assert plan["steps"][0]["structure"] == {"kind": "mlp_block", "layer": 0}
    assert math.isfinite(plan["steps"][0]["score"])
    assert any("scored nan; ranked last" in w.message for w in log.of(ev.Notice))


def test_every_candidate_non_finite_pauses_and_says_why(dense, calibration_file, tmp_path):
    engine, log = engine_for(poisoned(dense, "norm"), calibration_file, tmp_path)
    engine.start()
    paused(log)
    assert not log.of(ev.StepCommitted)
    assert "overflow" in log.of(ev.Notice)[-1].message
    assert "bfloat16 or float32" in log.of(ev.Notice)[-1].message
    engine.send(cmd.Stop())
    assert finish(engine, log).reason == "stopped"


# --- atomic commits and the refresh ------------------------------------------------------------
def test_a_failed_refresh_leaves_model_plan_and_journal_agreeing(
    dense, calibration_file, tmp_path, monkeypatch
):
    folder = SessionFolder(tmp_path / "session")
    folder.path.mkdir()
    engine, log = engine_for(dense, calibration_file, tmp_path, journal=folder)
    original, calls = Scorer._refresh, []

    def failing(self, changed, interrupt):
        calls.append(changed)
        if len(calls) == 3:  # the initial pass, the first commit, then the second commit fails
            raise RuntimeError("injected failure in the refresh")
        return original(self, changed, interrupt)

    monkeypatch.setattr(Scorer, "_refresh", failing)
    result = engine.run()
    assert result.reason == "error" and "injected" in log.of(ev.Error)[0].message
    steps = engine.pruning.steps
    assert len(steps) == 1 == len(log.of(ev.StepCommitted))
    assert folder.read_journal().steps == steps
    assert result.plan["steps"] == [step.to_dict() for step in steps]
    assert engine.pruning.model.num_parameters() == steps[-1].params
    fresh = copy.deepcopy(dense[0])
    apply_plan(fresh, result.plan)
    torch.testing.assert_close(logits(fresh), logits(engine.pruning.model), rtol=0, atol=0)
    # and the cache was put back: the next score is the model's own
    pruning = engine.pruning
    for scorer in pruning._distinct_scorers():
        scorer.catch_up()
        naive = Scorer(pruning.model, pruning.adapter, scorer.chunks, 2, prefix_cache=False)
        assert scorer.current_score() == pytest.approx(naive.score(), rel=1e-6)


def test_an_oom_in_the_refresh_lowers_the_batch_and_the_plan_is_unchanged(
    dense, calibration_file, tmp_path, monkeypatch
):
    reference, _ = engine_for(dense, calibration_file, tmp_path)
    expected = reference.run().plan["steps"]
    engine, log = engine_for(dense, calibration_file, tmp_path)
    original, calls = Scorer._refresh, []

    def oom_once(self, changed, interrupt):
        calls.append(changed)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("injected")
        return original(self, changed, interrupt)

    monkeypatch.setattr(Scorer, "_refresh", oom_once)
    steps = engine.run().plan["steps"]
    assert any("batch size lowered to 1" in w.message for w in log.of(ev.Notice))
    assert [s["structure"] for s in steps] == [s["structure"] for s in expected]
    assert [s["score"] for s in steps] == pytest.approx([s["score"] for s in expected], rel=1e-5)


def test_the_refresh_writes_in_place(dense, calibration_file, tmp_path):
    engine, log = engine_for(dense, calibration_file, tmp_path)
    engine.send(cmd.Pause())
    engine.start()
    paused(log)
    scorer = engine.pruning.scorers["blocks"]
    before = {b: t.data_ptr() for b, t in scorer._boundaries.items()}
    engine.send(cmd.Override("L0.attn"))
    log.wait_count(ev.StepCommitted, 1)
    assert scorer.is_fresh
    assert {b: t.data_ptr() for b, t in scorer._boundaries.items()} == before
    engine.send(cmd.Stop())
    finish(engine, log)


def test_only_the_running_dimension_refreshes_at_commit(dense, calibration_file, tmp_path):
    """Faithful multipruner scores blocks and widths on different rows: two scorers."""
    engine, log = engine_for(dense, calibration_file, tmp_path)
    engine.send(cmd.Pause())
    engine.start()
    paused(log)
    pruning = engine.pruning
    blocks, widths = pruning.scorers["blocks"], pruning.scorers["mlp_channels"]
    if blocks is widths:  # one calibration set: give widths their own to see the difference
        widths = Scorer(pruning.model, pruning.adapter, blocks.chunks[:1], 2)
        pruning.scorers["mlp_channels"] = pruning.scorers["attn_heads"] = widths
    engine.send(cmd.Override("L1.attn"))  # small: the block dimension still runs after it
    log.wait_count(ev.StepCommitted, 1)
    assert pruning.current_dimension() == "blocks"
    assert blocks.is_fresh and not widths.is_fresh
    engine.send(cmd.Stop())
    finish(engine, log)
    widths.catch_up()
    naive = Scorer(pruning.model, pruning.adapter, widths.chunks, 2, prefix_cache=False)
    assert widths.current_score() == pytest.approx(naive.score(), rel=1e-6)


# --- stop in every phase -------------------------------------------------------------------------
def test_the_build_can_be_cut_at_every_piece_of_work(dense, calibration_file, tmp_path):
    """Loading, ranking, dense scoring and a resume replay all call the interrupt between
    their pieces; cutting at each of them stops the build there."""
    from mptui.engine.errors import Cancelled
    from mptui.engine.search.setup import build_pruning

    engine, _ = engine_for(dense, calibration_file, tmp_path)
    plan = engine.run().plan
    replayed = tuple(map(PlanStep.from_dict, plan["steps"]))
    request = dataclasses.replace(engine.request, resume_steps=replayed)
    calls: list[int] = []
    build_pruning(
        request, lambda e: None, (copy.deepcopy(dense[0]), dense[1]), lambda: calls.append(1)
    )
    layers, steps = 3, len(plan["steps"])
    assert len(calls) >= 1 + layers + steps  # after load, per layer ranked, per replayed step
    for cut in range(1, len(calls) + 1, max(1, len(calls) // 8)):
        seen = []

        def interrupt(cut=cut, seen=seen):
            seen.append(1)
            if len(seen) == cut:
                raise Cancelled("stop")

        with pytest.raises(Cancelled):
            build_pruning(request, lambda e: None, (copy.deepcopy(dense[0]), dense[1]), interrupt)


def test_stop_before_the_model_is_loaded_stops_cleanly(dense, calibration_file, tmp_path):
    engine, log = engine_for(dense, calibration_file, tmp_path)
    engine.send(cmd.Stop())
    assert engine.run().reason == "stopped"
    assert not log.of(ev.Error) and ending(log) == ["stopped", "ended"]


# --- the random driver -------------------------------------------------------------------------
SEQUENCES = 200
DETERMINISM_SEED = 21  # 21 commands of every kind, lingering after the search


def random_command(rng: random.Random, engine: Engine) -> cmd.Command:
    kind = rng.choice(
        ["pause", "resume", "resume", "undo", "override", "override", "accept", "order",
         "guided", "bad"]
    )  # fmt: skip
    if kind == "pause":
        return cmd.Pause()
    if kind == "resume":
        return cmd.Resume()
    if kind == "undo":
        return cmd.Undo()
    if kind == "accept":
        return cmd.Accept()
    if kind == "order":
        return cmd.SetOrder(tuple(rng.sample(DIMENSIONS, 3)))
    if kind == "guided":
        return cmd.SetGuided(rng.random() < 0.5)
    if kind == "bad":
        return rng.choice([cmd.Override("L7.attn"), cmd.Override("x"), cmd.SetOrder(("blocks",))])
    layer = rng.randrange(3)
    return cmd.Override(f"L{layer}.{rng.choice(['attn', 'mlp', 'mlp-40', 'heads-16'])}")


class RandomDriver:
    """Throws seeded random commands at the engine, every one from the engine's own thread, so
    that the seed alone decides the run (no clock, no second thread): at chosen events (mid-step,
    at a commit, on a proposal, at a change of state, after the search), and whenever the engine
    is about to wait for a command (paused, waiting for the user, lingering after the search),
    as a user acts when the engine waits. Once its budget is spent it only ends the run: guided
    mode off and resume when the engine waits, and after the search, one last command and Stop.
    """

    def __init__(self, rng: random.Random, engine: Engine, budget: int) -> None:
        self.rng, self.engine, self.budget = rng, engine, budget
        self.sent: list[cmd.Command] = []
        engine._commands = DrivenQueue(self.idle)  # the engine's inbox (no public hook for this)
        engine.subscribe(self)

    def send(self, command: cmd.Command) -> None:
        self.sent.append(command)
        self.engine.send(command)

    def take(self) -> bool:
        if self.budget <= 0:
            return False
        self.budget -= 1
        return True

    def __call__(self, event: ev.Event) -> None:
        moments = (ev.CandidateScored, ev.StepCommitted, ev.Proposal, ev.StateChanged, ev.Finished)
        if isinstance(event, moments) and self.rng.random() < 0.15 and self.take():
            self.send(random_command(self.rng, self.engine))

    def idle(self) -> None:
        """The engine is about to wait for a command and none is queued."""
        if self.engine.result is not None:  # lingering after the search
            self.send(random_command(self.rng, self.engine))
            self.send(cmd.Stop())
        elif self.take():
            self.send(random_command(self.rng, self.engine))
        else:
            self.send(cmd.SetGuided(False))
            self.send(cmd.Resume())


class DrivenQueue(queue.Queue):
    """A command queue that tells ``idle`` when its reader is about to block on it empty."""

    def __init__(self, idle) -> None:
        super().__init__()
        self.idle = idle

    def get(self, block: bool = True, timeout: float | None = None):
        if block and self.empty():
            self.idle()
        return super().get(block, timeout)


def driven_run(seed: int, dense, calibration_file, tmp_path) -> tuple[Engine, EventLog, list]:
    """One seeded sequence to its end: a few commands queued before the start, the rest sent
    by the driver. Returns the engine, its events and every command sent, in order."""
    rng = random.Random(seed)
    linger = rng.random() < 0.3
    engine, log = engine_for(
        dense, calibration_file, tmp_path, linger=linger, guided=rng.random() < 0.3,
        target_ratio=rng.choice([0.2, 0.35]),
    )  # fmt: skip
    driver = RandomDriver(rng, engine, budget=rng.randrange(4, 20))
    for _ in range(rng.randrange(0, 6)):
        if driver.take():
            driver.send(random_command(rng, engine))
    engine.start()
    assert engine.join(TIMEOUT), f"seed {seed}: {log.summary()}"
    assert log.of(ev.Finished)[0].reason == "done", f"seed {seed}: {log.summary()}"
    return engine, log, driver.sent


@pytest.mark.parametrize("block", range(4))
def test_random_command_sequences_never_break_the_run(block, dense, calibration_file, tmp_path):
    """50 seeded sequences per block, 200 in all, on every kind of moment."""
    for seed in range(block * SEQUENCES // 4, (block + 1) * SEQUENCES // 4):
        engine, log, _ = driven_run(seed, dense, calibration_file, tmp_path)
        assert_consistent(engine, log, dense)


def test_a_seed_decides_the_whole_driven_run(dense, calibration_file, tmp_path):
    """The driver has no clock in it: the same seed sends the same commands at the same
    moments, so a failing seed fails again, the same way."""

    def record(folder):
        engine, log, sent = driven_run(DETERMINISM_SEED, dense, calibration_file, folder)
        moments = [type(e).__name__ for e in log.events if not isinstance(e, ev.MemorySample)]
        steps = [(s["structure"], s["chosen_by"], s["score"]) for s in engine.result.plan["steps"]]
        return sent, moments, steps

    first = record(tmp_path / "first")
    sent, _, steps = first
    assert len(sent) >= 10 and steps  # a run with something to repeat
    kinds = {cmd.Pause, cmd.Resume, cmd.Override, cmd.Undo, cmd.SetOrder, cmd.SetGuided, cmd.Stop}
    assert {type(c) for c in sent} >= kinds
    assert record(tmp_path / "second") == first


def test_a_failed_journal_write_undoes_the_commit(dense, calibration_file, tmp_path):
    """A full disk at the journal: the commit did not happen, in memory either."""

    class FullDisk(SessionFolder):
        def record_commit(self, step) -> None:
            if len(self.read_journal().steps) == 2:
                raise OSError(28, "No space left on device")
            super().record_commit(step)

    folder = FullDisk(tmp_path / "session")
    folder.path.mkdir()
    engine, log = engine_for(dense, calibration_file, tmp_path, journal=folder)
    result = engine.run()
    assert result.reason == "error" and "No space left" in log.of(ev.Error)[0].message
    assert len(engine.pruning.steps) == 2 == len(log.of(ev.StepCommitted))
    assert folder.read_journal().steps == engine.pruning.steps
    fresh = copy.deepcopy(dense[0])
    apply_plan(fresh, result.plan)
    torch.testing.assert_close(logits(fresh), logits(engine.pruning.model), rtol=0, atol=0)
