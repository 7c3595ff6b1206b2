"""--fast: successive halving rules candidates out on a few rows, and says that it did."""

from __future__ import annotations

import math

import pytest
import torch

from mptui.engine.api import BadInput, PruneSettings
from mptui.engine.search.fast_search import exhaustive, first_rows, successive_halving
from mptui.engine.search.structures import Structure

ROWS = 32
CANDIDATES = [Structure("attn_block", i) for i in range(4)]
#: Per-row NLLs: L1 is best overall but L0 leads on the first rows by a hair; L3 is far worse.
DIFFICULTY = torch.linspace(2.0, 3.0, ROWS, dtype=torch.float64)
OFFSETS = {0: 0.0, 1: -0.001, 2: 0.004, 3: 1.0}


def row_nll(candidate: Structure, rows: range) -> torch.Tensor:
    noise = torch.sin(torch.arange(ROWS, dtype=torch.float64) * (candidate.layer + 1)) * 0.01
    return (DIFFICULTY + OFFSETS[candidate.layer] + noise)[rows.start : rows.stop]


def test_a_clearly_worse_candidate_is_ruled_out_and_survivors_get_every_row():
    evaluations = list(successive_halving(CANDIDATES, row_nll, ROWS, margin=3.0))
    last = {e.candidate.layer: e for e in evaluations}
    assert last[3].rows == first_rows(ROWS) == 4  # ruled out after the first round
    assert all(last[i].rows == ROWS for i in (0, 1))  # the near-tie goes to the end
    exact = {e.candidate.layer: e.score for e in exhaustive(CANDIDATES, row_nll, ROWS)}
    for i in (0, 1):  # a survivor's score is the exact one
        assert last[i].score == pytest.approx(exact[i], rel=1e-12)
    assert min(exact, key=exact.get) == 1
    full = {i: e.score for i, e in last.items() if e.rows == ROWS}
    assert min(full, key=full.get) == 1  # the same choice as the exact search
    scored = sum(e.new_rows for e in evaluations)
    assert scored < len(CANDIDATES) * ROWS and all(e.new_rows > 0 for e in evaluations)


def test_a_zero_margin_keeps_only_the_leaders_and_non_finite_never_survives():
    def with_nan(candidate: Structure, rows: range) -> torch.Tensor:
        values = row_nll(candidate, rows)
        return values * math.nan if candidate.layer == 2 else values

    last = {e.candidate.layer: e for e in successive_halving(CANDIDATES, with_nan, ROWS, 0.0)}
    assert last[2].rows == 4 and math.isnan(last[2].score)
    assert last[3].rows == 4


def test_a_tie_within_the_tolerance_is_ruled_out_and_without_it_goes_to_the_end():
    """Two candidates 1e-6 apart with row noise of 2e-5: no subset of rows separates them, so
    without a tolerance both are scored on every row; with 1e-4 the trailing one is ruled out
    after the first round (it cannot be 1e-4 better than the leader)."""

    def tied(candidate: Structure, rows: range) -> torch.Tensor:
        noise = torch.sin(torch.arange(ROWS, dtype=torch.float64) * (candidate.layer + 1)) * 2e-5
        offset = {0: 0.0, 1: 1e-6, 2: 0.5, 3: 1.0}[candidate.layer]
        return (DIFFICULTY + offset + noise)[rows.start : rows.stop]

    def rows_scored(tolerance: float) -> dict[int, int]:
        runs = successive_halving(CANDIDATES, tied, ROWS, 3.0, tolerance)
        return {e.candidate.layer: e.rows for e in runs}

    assert rows_scored(0.0) == {0: ROWS, 1: ROWS, 2: 4, 3: 4}
    leader = 0 if tied(CANDIDATES[0], range(4)).mean() < tied(CANDIDATES[1], range(4)).mean() else 1
    assert rows_scored(1e-4) == {leader: ROWS, 1 - leader: 4, 2: 4, 3: 4}


def test_fast_and_faithful_do_not_mix_and_the_margin_is_a_number():
    with pytest.raises(BadInput, match=r"^fast cannot be used with faithful multipruner"):
        PruneSettings(0.2, fast=True, faithful="multipruner")
    for margin in (-1.0, math.inf, math.nan):
        with pytest.raises(BadInput, match=r"^fast_margin .* must be a number of at least 0"):
            PruneSettings(0.2, fast=True, fast_margin=margin)
    for tolerance in (-1e-4, 1.0, math.nan):
        with pytest.raises(BadInput, match=r"^fast_tolerance .* at least 0 and below 1"):
            PruneSettings(0.2, fast=True, fast_tolerance=tolerance)
