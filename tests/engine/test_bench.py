"""The benchmark harness keeps working: both modes agree and the report is complete."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bench.models import build_llama_in_memory
from bench.search import main
from bench.tiny import tiny_text


def test_search_benchmark_runs_both_modes(tiny_model_dir, calibration_file, tmp_path):
    report = main([
        "--model", str(tiny_model_dir("llama")), "--calibration", str(calibration_file),
        "--seqlen", "32", "--steps", "2", "--json", str(tmp_path / "r.json"),
    ])  # fmt: skip
    naive, cached = report["modes"]["naive"], report["modes"]["cached"]
    assert naive["structures"] == cached["structures"] and len(naive["structures"]) == 2
    assert naive["flops"] > cached["flops"] > 0
    assert report["flop_ratio"] == pytest.approx(naive["flops"] / cached["flops"])
    assert (tmp_path / "r.json").exists()


def test_in_memory_llama_has_the_asked_shape():
    shape = {
        "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    }  # fmt: skip
    model, tokenizer = build_llama_in_memory("cpu", "float32", shape)
    assert model.config.num_hidden_layers == 2 and model.lm_head.weight.shape == (1000, 64)
    assert max(tokenizer.get_vocab().values()) < 1000


def test_workers_benchmark_compares_world_sizes_on_the_same_plan(tiny_model_dir, calibration_file):
    from bench.workers import main as workers

    report = workers([
        "--model", str(tiny_model_dir("llama")), "--calibration", str(calibration_file),
        "--nsamples", "2", "--seqlen", "16", "--steps", "1", "--repeats", "1",
    ])  # fmt: skip
    assert report["plans_equal"] and set(report["speedup"]) == {1, 2}
    assert report["speedup"][1] == 1.0 and report["per_step_seconds"][2] > 0
    projection = report["projection_8_gpus"]
    assert projection["minutes"] == pytest.approx(
        projection["one_gpu_minutes"] * projection["balance"] / 8
    )


def test_step_balance_measures_the_busiest_worker():
    from bench.workers import reference_balance, step_balance

    assert step_balance([3, 1], 2) == 1.5  # one worker does 3 of 4: 1.5x a perfect half
    assert step_balance([2, 2], 2) == 1.0
    assert reference_balance(1) == 1.0
    assert 1.0 <= reference_balance(8) < 1.05


def test_fast_benchmark_judges_the_final_plans(tiny_model_dir, calibration_file, tmp_path):
    from bench.fast import MIN_FLOP_RATIO, PPL_TOLERANCE
    from bench.fast import main as fast

    validation = tmp_path / "validation.txt"
    validation.write_text("\n\n".join(tiny_text(12, seed=1)[6:]) + "\n")
    report = fast([
        "--model", str(tiny_model_dir("llama")), "--calibration", str(calibration_file),
        "--validation", str(validation), "--seqlen", "16", "--target-ratio", "0.1",
        "--distribution", "1:0:0", "--margins", "3,0", "--tolerances", "0",
    ])  # fmt: skip
    exact, (wide, none) = report["exact"], report["results"]
    assert 2 <= exact["steps"] <= 3 and exact["flops"] > 0
    assert exact["ratio"] >= 0.1 and exact["calibration_ppl"] > 1 and exact["held_out_ppl"] > 1
    for r in (wide, none):
        assert r["flop_ratio"] == pytest.approx(exact["flops"] / r["flops"])
        assert r["rows_scored"] < exact["rows_scored"] and r["flop_ratio"] > 1
        assert r["passes"] == (
            r["same_ratio"] and r["flop_ratio"] >= MIN_FLOP_RATIO
            and max(r["calibration_diff"], r["held_out_diff"]) <= PPL_TOLERANCE
        )  # fmt: skip
    assert none["flop_ratio"] > wide["flop_ratio"]  # margin 0 rules out all but the leader
    # the same plan: the same model; its score, a mean over the rows in another order
    assert wide["same_plan"] and wide["held_out_ppl"] == exact["held_out_ppl"]
    assert wide["calibration_ppl"] == pytest.approx(exact["calibration_ppl"], rel=1e-9)
    assert not none["same_plan"] and none["calibration_diff"] > 0  # it kept a worse candidate


def test_trained_benchmark_model_is_deterministic_and_cached(tmp_path, monkeypatch):
    import bench.trained as trained
    from mptui.demo.build import Training

    assert trained.QWEN12.family != "llama" and trained.QWEN12.num_layers >= 12
    recipe = trained.Recipe(
        name="tiny", packages=("click",), vocab_size=300, num_layers=2, hidden_size=32,
        intermediate_size=64, heads=4, kv_heads=2, max_chars=20_000,
        training=Training(steps=2, batch=2, seqlen=32, warmup=1),
    )  # fmt: skip
    first = trained.build_trained(recipe, tmp_path / "a", log=lambda text: None)
    again = trained.build_trained(recipe, tmp_path / "b", log=lambda text: None)
    assert first.name == again.name and first.name.startswith("tiny-")
    for name in ("model/model.safetensors", "calibration.txt", "validation.txt"):
        assert (first / name).read_bytes() == (again / name).read_bytes()
    calibration = set((first / "calibration.txt").read_text().split("\n\n"))
    held_out = set((first / "validation.txt").read_text().split("\n\n"))
    assert held_out and not calibration & held_out
    config = json.loads((first / "model" / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["num_hidden_layers"] == 2

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(trained, "train", no_training)
    assert trained.build_trained(recipe, tmp_path / "a") == first
    changed = dataclasses.replace(recipe, training=Training(steps=3, batch=2, seqlen=32, warmup=1))
    assert changed.folder(tmp_path / "a") != first
