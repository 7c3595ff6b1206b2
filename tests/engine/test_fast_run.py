"""--fast on a real tiny run: the plan records it, fewer rows are scored than by the exact search,
the app's candidates table shows which candidates were fully scored, and its rounds draw their
rows across the whole calibration set."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from mptui.app.state import RunState
from mptui.engine.api import CalibrationSpec, PruneSettings, RunRequest, prune
from mptui.engine.api import events as ev
from mptui.engine.search.calibration import load_calibration
from mptui.engine.search.fast_search import first_rows
from mptui.engine.search.setup import build_pruning
from mptui.engine.session.summary import markdown, summarize


def test_a_fast_run_records_itself_and_scores_fewer_rows(tiny_model_dir, calibration_file,
                                                         tmp_path):  # fmt: skip
    scored: list[ev.CandidateScored] = []

    def run(fast: bool, subscribers: list) -> dict:
        return prune(
            str(tiny_model_dir("llama")), calibration=str(calibration_file), target_ratio=0.2,
            distribution="1:1:0", seqlen=16, mlp_group=40, fast=fast, cache_dir=tmp_path,
            subscribers=subscribers,
        )  # fmt: skip

    exact = run(False, [])
    fast = run(True, [lambda e: scored.append(e) if isinstance(e, ev.CandidateScored) else None])
    assert fast["settings"]["fast"] is True and fast["settings"]["fast_margin"] == 1.0
    assert fast["settings"]["fast_tolerance"] == 1e-4
    assert exact["settings"]["fast"] is False and exact["settings"]["fast_margin"] is None
    assert "fast search (--fast), an approximation" in markdown(summarize(fast))
    assert "fast search" not in markdown(summarize(exact))
    assert sum(s["tokens"] for s in fast["steps"]) < sum(s["tokens"] for s in exact["steps"])
    assert any(e.rows < e.total_rows for e in scored)  # some were ruled out early
    state = RunState()  # the app's candidates table: fully scored first, "~" for the others
    for event in (e for e in scored if e.step == 1):
        state.apply(event)
    fully = [row.fully_scored for row in state.ranked()]
    assert fully == sorted(fully, reverse=True) and True in fully and False in fully


def test_the_fast_rounds_take_a_seeded_spread_of_the_rows_and_the_exact_search_them_as_cut(
    tiny_model_dir, calibration_file
):
    """The rounds score contiguous ranges of the scorer's rows: under --fast those rows are the
    calibration chunks in an order drawn from --seed, so the first round is not the first rows
    (a few documents) but a sample of all of them; the exact search keeps the chunks as cut."""
    path = tiny_model_dir("llama")

    def rows(fast: bool, seed: int = 42) -> tuple[torch.Tensor, torch.Tensor]:
        spec = CalibrationSpec(str(calibration_file), 0, 16, seed)
        settings = PruneSettings.with_distribution(0.2, "1:1:0", calibration=spec, fast=fast)
        pruning = build_pruning(RunRequest(str(path), settings), lambda event: None)
        as_cut = load_calibration(spec, AutoTokenizer.from_pretrained(path))
        return pruning.scorers["blocks"].chunks, as_cut

    exact, as_cut = rows(False)
    assert torch.equal(exact, as_cut)
    fast, _ = rows(True)
    first = first_rows(len(as_cut))
    assert first < len(as_cut) and not torch.equal(fast[:first], as_cut[:first])
    assert sorted(fast.tolist()) == sorted(as_cut.tolist())  # every row, once
    assert torch.equal(rows(True)[0], fast)  # the same seed, the same order (and resume)
    assert not torch.equal(rows(True, seed=7)[0], fast)
