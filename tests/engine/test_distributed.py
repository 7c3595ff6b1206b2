"""Candidate-parallel scoring on torch.distributed (gloo, CPU): the same plan and the same
scores, bit for bit, whatever the number of workers, steering included.

Each world is a real one of forked workers (bench/world.py). The launcher itself (``--workers``,
torchrun) is tested in tests/end_to_end/test_workers.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from bench.tiny import FAMILIES
from bench.workers import split_by_cost
from bench.world import run_world
from mptui.engine.api import CalibrationSpec, Engine, PruneSettings, RunRequest
from mptui.engine.control import commands as cmd
from mptui.engine.control import events as ev
from mptui.engine.search.setup import build_pruning
from mptui.engine.workers import follower


def request_for(path, calibration_file, cache_dir, **settings) -> RunRequest:
    options = {"target_ratio": 0.3, "mlp_group": 40, "batch_size": 2, "guided": False}
    options |= settings
    run_settings = PruneSettings.with_distribution(
        options.pop("target_ratio"),
        options.pop("distribution", "30:40:30"),
        options.pop("order", "blocks,mlp_channels,attn_heads"),
        calibration=CalibrationSpec(str(calibration_file), 2, 16),
        **options,
    )
    return RunRequest(str(path), run_settings, device="cpu", cache_dir=cache_dir)


class Record:
    """What the leader saw: every score by (model version, candidate), and the plan. The
    version counts the commits and undos before the score, so a step scored again after an
    undo is told apart from the first time. ``script`` may steer from the events."""

    def __init__(self, script: Callable[[Engine, ev.Event], None] | None = None) -> None:
        self.scores: dict[tuple[int, str], float] = {}
        self.version = 0
        self.plan: dict = {}
        self.reason = ""
        self.engine: Engine | None = None
        self._script = script

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.CandidateScored):
            self.scores[(self.version, event.structure)] = event.score
        elif isinstance(event, (ev.StepCommitted, ev.StepUndone)):
            self.version += 1
        elif isinstance(event, ev.Finished):
            self.plan, self.reason = event.plan, event.reason
        if self._script is not None:
            self._script(self.engine, event)

    def result(self) -> tuple[dict, list, str]:
        steps = [(s["structure"], s["score"], s["chosen_by"]) for s in self.plan["steps"]]
        return self.scores, steps, self.reason


def run_alone(request: RunRequest, script=None) -> tuple[dict, list, str]:
    record = Record(script)
    record.engine = Engine(request, [record])
    record.engine.run()
    return record.result()


def run_team(world_size: int, request: RunRequest, script_class=None) -> tuple[dict, list, str]:
    return run_world(world_size, request, lambda: Record(script_class() if script_class else None))


def test_split_balances_cost_and_is_deterministic():
    costs = [8, 7, 6, 5, 4, 3, 2, 1]
    shares = split_by_cost(costs, 3)
    assert shares == [[0, 5, 6], [1, 4, 7], [2, 3]]
    assert sorted(i for share in shares for i in share) == list(range(8))
    loads = [sum(costs[i] for i in share) for share in shares]
    assert loads == [13, 12, 11]  # the ideal is 12; longest-first is within one item
    assert split_by_cost([5, 5], 1) == [[0, 1]]
    assert split_by_cost([1], 3) == [[0], [], []]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_gives_the_same_plan_and_scores_on_2_and_3_workers(
    family, tiny_model_dir, calibration_file, tmp_path
):
    request = request_for(tiny_model_dir(family), calibration_file, tmp_path)
    alone = run_alone(request)
    assert alone[2] == "done" and len(alone[1]) >= 3
    for world_size in (2, 3):
        assert run_team(world_size, request) == alone  # scores equal with ==, not approx


@pytest.mark.parametrize("method", ["sleb", "shortgpt"])
def test_the_layer_methods_give_the_same_plan_and_scores_on_2_workers(
    method, tiny_model_dir, calibration_file, tmp_path
):
    """A layer is scored whole by one worker and committed as two sub-blocks on every replica
    (docs/method.md §11)."""
    request = request_for(tiny_model_dir("llama"), calibration_file, tmp_path, method=method)
    alone = run_alone(request)
    assert alone[2] == "done" and len(alone[1]) >= 4
    assert run_team(2, request) == alone


class Steer:
    """Pause in the middle of step 2 (once); while paused undo, override and switch the order;
    then resume. In guided mode, accept every proposal but the fourth, which is overridden."""

    def __init__(self) -> None:
        self.paused_once = False

    def __call__(self, engine: Engine, event: ev.Event) -> None:
        if isinstance(event, ev.CandidateScored) and event.step == 2 and event.k == 2:
            if not self.paused_once:
                self.paused_once = True
                engine.send(cmd.Pause())
        elif isinstance(event, ev.StateChanged) and event.state == "paused":
            engine.send(cmd.Undo())
            engine.send(cmd.Override("L1.mlp-40"))
            engine.send(cmd.SetOrder(("attn_heads", "mlp_channels", "blocks")))
            engine.send(cmd.Resume())
        elif isinstance(event, ev.Proposal):
            engine.send(cmd.Override("L0.mlp-40") if event.step == 4 else cmd.Accept())


@pytest.mark.parametrize("guided", [False, True], ids=["auto", "guided"])
def test_steering_gives_the_same_plan_on_two_workers(
    guided, tiny_model_dir, calibration_file, tmp_path
):
    request = request_for(tiny_model_dir("llama"), calibration_file, tmp_path, guided=guided)
    alone_scores, alone_plan, reason = run_alone(request, Steer())
    assert reason == "done" and "user" in [chosen_by for *_, chosen_by in alone_plan]
    scores, plan, reason = run_team(2, request, Steer)
    assert (plan, reason) == (alone_plan, "done")
    common = scores.keys() & alone_scores.keys()
    assert all(scores[key] == alone_scores[key] for key in common)
    # Only the step the pause cut short was scored in part, by other candidates per world size.
    differing = {version for version, _ in scores.keys() ^ alone_scores.keys()}
    assert len(differing) <= 1


class Errors(Record):
    """A Record that also keeps the run's error messages."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def __call__(self, event: ev.Event) -> None:
        super().__call__(event)
        if isinstance(event, ev.Error):
            self.errors.append(event.message)

    def result(self) -> tuple[list[str], list, str]:
        return self.errors, super().result()[1], self.reason


def test_a_replica_that_diverges_stops_the_run_after_the_commit(
    tiny_model_dir, calibration_file, tmp_path, monkeypatch
):
    """Rank 1's replica differs from rank 0's by one bit of one weight: the checksum after the
    first commit catches it, and the run ends there with that step in its plan."""

    def diverging_pruning(request, on_event, team):
        pruning = build_pruning(request, on_event, team=team)
        weight = pruning.model.get_output_embeddings().weight
        with torch.no_grad():
            weight.view(-1).view(torch.int32)[7] ^= 1
        return pruning

    monkeypatch.setattr(follower, "build_pruning", diverging_pruning)  # forked: rank 1 only
    request = request_for(tiny_model_dir("llama"), calibration_file, tmp_path)
    errors, plan, reason = run_world(2, request, Errors)
    assert reason == "error" and len(plan) == 1
    assert len(errors) == 1
    assert errors[0].startswith("worker rank 1's model differs from rank 0's after step 1")
