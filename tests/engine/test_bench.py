"""The benchmark harness keeps working: both modes agree and the report is complete."""

from __future__ import annotations

import pytest

from bench.models import build_llama_in_memory
from bench.search import main


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


def test_fast_benchmark_compares_margins_on_the_same_steps(tiny_model_dir, calibration_file):
    from bench.fast import main as fast

    report = fast([
        "--model", str(tiny_model_dir("llama")), "--calibration", str(calibration_file),
        "--seqlen", "16", "--steps", "2", "--mlp-group", "40", "--margins", "3,0",
        "--tolerances", "0",
    ])  # fmt: skip
    wide, none = report["results"]
    assert wide["steps"] == none["steps"] == 2
    assert none["flop_ratio"] >= wide["flop_ratio"] > 1  # a smaller margin rules out more
    assert none["fully_scored_per_step"] <= wide["fully_scored_per_step"]
    assert 0 <= none["equal_share"] <= 1 and wide["equal_share"] == 1.0
    canonical, leader_first = report["early_exit"]  # each asserts it kept every choice
    assert canonical["flop_ratio"] >= 1 and leader_first["flop_ratio"] >= 1
