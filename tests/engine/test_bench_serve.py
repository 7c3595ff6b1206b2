"""``python -m bench serve`` on its tiny config: the plan derived from the demo run, the pruned
model's ratio, the GGUF exports and the table (no timing is asserted: only that it was taken)."""

from __future__ import annotations

import pytest

from bench.serve import (
    DIMENSIONS,
    HALF_LLAMA2,
    QUICK,
    TARGET,
    DemoRun,
    big_layers,
    derive_plan,
    measure,
    table,
)


def test_the_plan_keeps_the_demo_runs_placement_and_reaches_the_target():
    demo = DemoRun(
        steps=[("mlp_block", 1), ("attn_block", 3), ("mlp_channels", 6), ("mlp_channels", 2),
               ("attn_heads", 2)],
        layers=8, ratio=0.22, seconds=0.0, ids=[],
    )  # fmt: skip
    plan = derive_plan(HALF_LLAMA2, demo)
    assert [(s.kind, s.layer) for s in plan.structures[:4]] == [
        ("mlp_block", 2), ("mlp_block", 3), ("attn_block", 6), ("attn_block", 7),
    ]  # fmt: skip
    assert {s.layer for s in plan.structures if s.kind == "mlp_channels"} == {4, 5, 12, 13}
    assert {s.layer for s in plan.structures if s.kind == "attn_heads"} == {4, 5}
    # each dimension stops at the first step that reaches its cumulative target (44:52:4)
    assert plan.reached["blocks"] >= TARGET * 0.44
    assert plan.reached["mlp_channels"] >= TARGET * 0.96
    assert TARGET <= plan.ratio < TARGET + 0.002
    assert all(s.remove == 512 for s in plan.structures if s.kind == "mlp_channels")
    assert all(s.remove == 128 for s in plan.structures if s.kind == "attn_heads")


def test_layers_map_onto_the_same_share_of_the_depth():
    assert big_layers(1, 8, 16) == [2, 3]
    assert [big_layers(d, 8, 22) for d in (0, 7)] == [[0, 1, 2], [20, 21]]
    assert sum(len(big_layers(d, 8, 22)) for d in range(8)) == 22
    assert big_layers(7, 8, 4) == [3]


def test_quick_serve_measures_every_row():
    pytest.importorskip("llama_cpp")
    result = measure(
        QUICK, types=("f16", "q8_0"), threads=(1,), repeats=1, prompt_tokens=16, new_tokens=4,
        demo_samples=(4, 64),
    )  # fmt: skip
    # the pruned model (pruned by the engine's apply_plan) holds what the plan counted
    assert result.params_pruned == result.derived.params[-1]
    assert result.params_dense == result.derived.dense
    assert result.ratio == pytest.approx(result.derived.ratio)
    assert TARGET <= result.ratio < TARGET + 0.02
    assert set(result.derived.reached) == set(DIMENSIONS)
    kinds = {s.kind for s in result.derived.structures}
    assert {"mlp_channels", "attn_heads"} <= kinds and kinds & {"attn_block", "mlp_block"}
    # the GGUF files hold the same parameters, plus llama.cpp's zero-weight stand-ins
    for gguf_type in ("f16", "q8_0"):
        dense, pruned = result.exports["dense", gguf_type], result.exports["pruned", gguf_type]
        assert dense.params == result.params_dense and dense.stand_ins == 0
        most = pruned.stand_ins * QUICK.hidden * (4 * QUICK.head_dim + 1)
        assert 0 <= pruned.params - result.params_pruned <= most
    assert [(r.backend, r.type, r.threads, r.phase) for r in result.rows] == [
        ("llama.cpp", "f16", 1, "prompt"), ("llama.cpp", "f16", 1, "generation"),
        ("llama.cpp", "q8_0", 1, "prompt"), ("llama.cpp", "q8_0", 1, "generation"),
        ("transformers", "f32", 1, "prompt"), ("transformers", "f32", 1, "generation"),
    ]  # fmt: skip
    for row in result.rows:
        assert row.dense > 0 and row.pruned > 0
        assert row.ideal == pytest.approx(1 / (1 - result.ratio))
    text = table(result.rows)
    assert text.splitlines()[0].startswith("| backend | type | threads | phase | dense tok/s |")
    assert len(text.splitlines()) == 2 + len(result.rows)
