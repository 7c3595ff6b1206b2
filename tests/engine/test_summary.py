"""The run summary, derived from the plan, agrees with the pruned model itself."""

from __future__ import annotations

import json
import time

import pytest

from mptui.engine.api import CalibrationSpec, Engine, PruneSettings, RunRequest
from mptui.engine.session import files as session_files
from mptui.engine.session.summary import markdown, summarize, write_summary


def test_summary_matches_the_pruned_model(tiny_model_dir, calibration_file, tmp_path):
    settings = PruneSettings.with_distribution(
        0.4, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32), mlp_group=40
    )
    engine = Engine(RunRequest(str(tiny_model_dir("phi3")), settings))
    plan = engine.run().plan
    adapter, model = engine.pruning.adapter, engine.pruning.model
    summary = summarize(plan)
    for row in summary["layers"]:
        layer = row["layer"]
        assert row["attn_removed"] == (not adapter.has_block(layer, "attn"))
        assert row["mlp_removed"] == (not adapter.has_block(layer, "mlp"))
        if not row["mlp_removed"]:
            assert row["mlp_width"] == adapter.mlp_width(layer)
        if not row["attn_removed"]:
            assert row["attn_width"] == adapter.attn_groups(layer) * adapter.attn_group_channels
    assert summary["params"] == model.num_parameters()
    assert summary["ratio"] == pytest.approx(
        1 - model.num_parameters() / plan["model"]["params_dense"]
    )
    assert sum(d["steps"] for d in summary["per_dimension"].values()) == len(plan["steps"])
    assert set(summary["per_dimension"]) == {"blocks", "mlp_channels", "attn_heads"}
    write_summary(tmp_path, plan, {"piqa": 0.61})
    text = (tmp_path / session_files.SUMMARY_MD).read_text()
    assert text == markdown(summarize(plan, {"piqa": 0.61}))
    assert "| piqa | 0.61 |" in text and f"{summary['final_score']:.4f} pruned" in text
    assert (tmp_path / session_files.SUMMARY_JSON).exists()


def test_an_evaluation_lands_in_the_session_folder_and_its_summary(
    tiny_model_dir, calibration_file, tmp_path
):
    from mptui.engine.control import commands as cmd
    from mptui.engine.control import events as ev
    from mptui.engine.output.evaluate import EvalRequest
    from mptui.engine.session.folder import SessionFolder, SessionRecorder

    settings = PruneSettings.with_distribution(
        0.3, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32), mlp_group=40
    )
    engine = Engine(RunRequest(str(tiny_model_dir("llama")), settings), linger=True)
    engine.subscribe(SessionRecorder(SessionFolder(tmp_path), engine.plan))
    done = []
    engine.subscribe(lambda event: done.append(event) if isinstance(event, ev.Evaluated) else 0)
    engine.send(cmd.Evaluate(EvalRequest(text=str(calibration_file), seqlen=32)))
    engine.start()  # the evaluation runs at the first step; then the search goes on
    deadline = time.monotonic() + 120
    while not engine.result:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    engine.send(cmd.Stop())  # the engine lingers after the search until told to stop
    assert engine.join(60)
    evaluation = json.loads((tmp_path / session_files.EVALUATION).read_text())
    assert evaluation["dense"] == done[0].dense and evaluation["pruned"] == done[0].pruned
    text = (tmp_path / session_files.SUMMARY_MD).read_text()
    assert f"| perplexity (dense) | {round(done[0].dense['perplexity'], 4)} |" in text
