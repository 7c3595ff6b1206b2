"""The typed plan: a hand-written plan keeps its shape, another format or a newer version fails
in one line, and one function gives the per-layer rows that the summary and the app both show.
A real run's plan is in tests/engine/test_plan_of_a_run.py."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mptui.app.state import RunState
from mptui.engine.control import events as ev
from mptui.engine.errors import BadInput
from mptui.engine.search.plan import (
    PLAN_FORMAT,
    LayerRow,
    Plan,
    PlanModel,
    PlanStep,
    layer_rows,
    read_plan_file,
)
from mptui.engine.search.structures import Structure
from mptui.engine.session import files as session_files
from mptui.engine.session.summary import markdown, summarize


def test_a_hand_written_plan_keeps_its_shape():
    """Keys a hand-written plan leaves out (architecture, dtype, dense_scores, written, the
    step costs) are not invented as nulls; the step costs read as 0."""
    data = {
        "format": PLAN_FORMAT,
        "model": {"name_or_path": "acme/tiny", "params_dense": 1000, "num_layers": 2,
                  "mlp_width": 8, "attn_width": 8},
        "settings": {}, "dense_score": 10.0,
        "steps": [{"index": 1, "dimension": "blocks", "structure": {"kind": "mlp_block",
                   "layer": 1}, "score": 11.0, "params": 900, "ratio": 0.1, "chosen_by": "user"}],
    }  # fmt: skip
    plan = Plan.from_dict(data)
    assert plan.steps[0].seconds == 0.0 and plan.model.dtype is None
    written = plan.to_dict()
    assert {k: v for k, v in written.items() if k != "steps"} == {
        k: v for k, v in data.items() if k != "steps"
    }
    costs = {"ratio_layers": 0.0, "seconds": 0.0, "candidates": 0, "tokens": 0}
    assert written["steps"][0] == data["steps"][0] | costs


BAD_LAYER_STEP = {
    "index": 1, "structure": {"kind": "attn_block", "layer": 9}, "score": 1.0, "params": 1,
    "ratio": 0.1, "chosen_by": "engine",
}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"format": "foo"}, "PLAN is not an mptui plan (format 'foo')"),
        ({"format": None}, "PLAN is not an mptui plan (no format)"),
        ({"format": "mptui.plan/x"}, "PLAN is not an mptui plan (format 'mptui.plan/x')"),
        (
            {"format": "mptui.plan/2"},
            "PLAN was written by a newer mptui (format 'mptui.plan/2'); upgrade mptui to read it",
        ),
        ({"steps": [{"index": 1}]}, "PLAN is damaged (no 'structure')"),
        (
            {"steps": [BAD_LAYER_STEP]},
            "PLAN is damaged (step 1 names layer 9 of a 4-layer model)",
        ),
    ],
)
def test_another_format_or_a_newer_version_fails_in_one_line(tmp_path, change, expected):
    data = {
        "format": PLAN_FORMAT,
        "model": {"name_or_path": "acme/tiny", "params_dense": 1000, "num_layers": 4,
                  "mlp_width": 8, "attn_width": 8},
        "settings": {}, "dense_score": 10.0, "steps": [],
    } | change  # fmt: skip
    if data["format"] is None:
        del data["format"]
    path = tmp_path / session_files.PLAN
    path.write_text(json.dumps(data))
    with pytest.raises(BadInput) as raised:
        read_plan_file(path)
    assert str(raised.value) == expected.replace("PLAN", str(path))
    with pytest.raises(BadInput, match=r"^the plan "):
        Plan.from_dict(data)


def test_a_file_that_is_no_json_or_no_object_fails_in_one_line(tmp_path):
    path = tmp_path / session_files.PLAN
    path.write_text('{"format": "mptui.plan/1", "steps": [')
    with pytest.raises(BadInput, match=r"plan\.json is damaged \(Expecting value") as raised:
        read_plan_file(path)
    assert "\n" not in str(raised.value)
    path.write_text("[1, 2]")
    with pytest.raises(BadInput, match=r"is not an mptui plan \(not a JSON object\)$"):
        read_plan_file(path)
    with pytest.raises(BadInput, match=r"missing\.json does not exist$"):
        read_plan_file(tmp_path / "missing.json")


# --- the per-layer rows ---------------------------------------------------------------------
def hand_plan() -> Plan:
    """Three layers, MLP 96 wide, attention 64 query channels wide."""
    structures = [
        Structure("attn_block", 1),
        Structure("mlp_channels", 0, remove=32, width_after=64),
        Structure("attn_heads", 2, remove=32, width_after=32),
        Structure("mlp_channels", 0, remove=32, width_after=32),
        Structure("mlp_block", 2),
    ]
    steps = [
        PlanStep(i, s, 10.0 + i, 1000 - 10 * i, 0.01 * i, "engine" if i % 2 else "user")
        for i, s in enumerate(structures, start=1)
    ]
    return Plan(PlanModel("acme/tiny", 1000, 3, 96, 64), {}, 10.0, steps)


EXPECTED_ROWS = [
    LayerRow(0, attn_removed=False, mlp_removed=False, mlp_width=32, attn_width=64),
    LayerRow(1, attn_removed=True, mlp_removed=False, mlp_width=96, attn_width=64),
    LayerRow(2, attn_removed=False, mlp_removed=True, mlp_width=96, attn_width=32),
]


def test_per_layer_rows_match_a_hand_written_expectation():
    plan = hand_plan()
    assert layer_rows(3, 96, 64, plan.steps) == EXPECTED_ROWS == plan.layer_rows()
    assert layer_rows(3, 96, 64, []) == [LayerRow(i, mlp_width=96, attn_width=64) for i in range(3)]
    summary = summarize(plan)
    assert summary["layers"] == [dataclasses.asdict(row) for row in EXPECTED_ROWS]
    table = markdown(summary)
    assert "| 0 | kept | kept | 32 | 64 |" in table
    assert "| 1 | removed | kept | 96 | 0 |" in table
    assert "| 2 | kept | removed | 0 | 32 |" in table
    assert summarize(plan.to_dict()) == summary  # the JSON gives the same summary


def test_the_apps_layer_pane_shows_the_same_rows_and_follows_undo():
    plan = hand_plan()
    state = RunState()
    state.apply(
        ev.Loaded(
            model="acme/tiny", architecture="LlamaForCausalLM", num_layers=3, params_dense=1000,
            params_layers_dense=800, dense_score=10.0, mlp_group=32, attn_group=32,
            group_source="given", mlp_width=96, attn_width=64,
            order=("blocks", "mlp_channels", "attn_heads"), targets={"blocks": 0.1}, tokens=64,
        )
    )  # fmt: skip
    for step in plan.steps:
        state.apply(ev.StepCommitted(step, step.score, step.ratio, 0.0, 0, 0.0, 1, 1))
    assert state.layers == EXPECTED_ROWS and state.last_commit_layer == 2
    state.apply(ev.StepUndone(5, "L2.mlp", 14.0, 0.04))
    assert state.layers == layer_rows(3, 96, 64, plan.steps[:4])
    assert not state.layers[2].mlp_removed and state.last_commit_layer is None
    state.apply(ev.StepUndone(4, "L0.mlp-32", 13.0, 0.03))
    assert state.layers[0].mlp_width == 64  # the earlier width step still counts
    step = plan.steps[4]
    state.apply(ev.StepCommitted(step, 15.0, 0.05, 0.0, 0, 0.0, 1, 1))
    assert state.layers[2].mlp_removed and state.last_commit_layer == 2
