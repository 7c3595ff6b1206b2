"""--fast on a real tiny run: the plan records it, fewer rows are scored than by the exact search,
and the app's candidates table shows which candidates were fully scored."""

from __future__ import annotations

from mptui.app.state import RunState
from mptui.engine.api import events as ev
from mptui.engine.api import prune
from mptui.engine.summary import markdown, summarize


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
    assert fast["settings"]["fast"] is True and fast["settings"]["fast_margin"] == 3.0
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
