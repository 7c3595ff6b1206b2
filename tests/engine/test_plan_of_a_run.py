"""The plan of a real tiny run: it survives a round trip to JSON unchanged (unknown keys too), and
``mptui export`` refuses a tampered one in one line."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from test_control import make_engine

from mptui.engine.api import Engine
from mptui.engine.search.plan import PLAN_FORMAT, Plan, PlanStep
from mptui.engine.search.structures import Structure

TOP_KEYS = ["format", "model", "settings", "dense_score", "dense_scores", "steps", "written"]
STEP_KEYS = [
    "index", "dimension", "structure", "score", "params", "ratio", "chosen_by", "ratio_layers",
    "seconds", "candidates", "tokens",
]  # fmt: skip


@pytest.fixture(scope="module")
def real_run(tiny_model_dir, calibration_file, tmp_path_factory):
    """A finished tiny run: its Plan, its Finished event's plan and its plan.json."""
    folder = tmp_path_factory.mktemp("plan")
    made, log = make_engine(tiny_model_dir("llama"), calibration_file, folder)
    engine = Engine(made.request, [log], plan_dirs=[folder])
    finished = engine.run()
    assert finished.reason == "done", log.summary()
    return engine.plan(), finished.plan, json.loads((folder / "plan.json").read_text())


def test_a_real_plan_round_trips_exactly(real_run):
    plan, event_plan, on_disk = real_run
    assert isinstance(plan, Plan) and all(isinstance(s, PlanStep) for s in plan.steps)
    assert {s.dimension for s in plan.steps} == {"blocks", "mlp_channels", "attn_heads"}
    assert list(on_disk) == TOP_KEYS and on_disk["format"] == PLAN_FORMAT == "mptui.plan/1"
    assert all(list(step) == STEP_KEYS for step in on_disk["steps"])
    assert event_plan == on_disk  # the event carries exactly the file's content, as plain JSON
    again = Plan.from_dict(on_disk)
    assert again.to_dict() == on_disk
    assert json.dumps(again.to_dict(), indent=2) == json.dumps(on_disk, indent=2)  # key order
    assert again == Plan.from_dict(event_plan) and again.steps == plan.steps
    assert all(isinstance(s.structure, Structure) for s in again.steps)
    assert plan.to_dict() | {"written": on_disk["written"]} == on_disk


def test_unknown_keys_survive_a_round_trip(real_run):
    _, _, on_disk = real_run
    data = json.loads(json.dumps(on_disk))
    data["reviewed_by"] = {"name": "someone", "ok": True}
    data["model"]["revision"] = "abc123"
    data["settings"]["future_option"] = [1, 2]
    data["steps"][0]["comment"] = "kept on purpose"
    data["steps"][-1]["structure"]["note"] = "narrow"
    plan = Plan.from_dict(data)
    assert plan.extra == {"reviewed_by": {"name": "someone", "ok": True}}
    assert plan.model.extra == {"revision": "abc123"}
    assert plan.steps[0].extra == {"comment": "kept on purpose"}
    assert plan.to_dict() == data
    assert list(plan.to_dict()) == [*TOP_KEYS, "reviewed_by"]


@pytest.mark.parametrize(
    ("tampered", "message"),
    [
        ("foo", "is not an mptui plan (format 'foo')"),
        (
            "mptui.plan/2",
            "was written by a newer mptui (format 'mptui.plan/2'); upgrade mptui to read it",
        ),
    ],
)
def test_mptui_export_refuses_a_tampered_plan_in_one_line(
    real_run, tmp_path, tampered, message, capsys
):
    _, _, on_disk = real_run
    session = tmp_path / "session"
    session.mkdir()
    (session / "plan.json").write_text(json.dumps(on_disk | {"format": tampered}))
    out = tmp_path / "out"
    code, stderr = run_cli(["export", str(session), "--out", str(out)], capsys)
    assert code == 2, stderr
    assert stderr.splitlines() == [f"mptui: error: {session / 'plan.json'} {message}"]
    assert not out.exists()
