"""Search rules of docs/method.md §3 and §9 on tiny models: ties, block count, faithful, OOM."""

from __future__ import annotations

import types

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mptui.engine.api import prune
from mptui.engine.errors import OutOfMemory
from mptui.engine.model.adapters import adapter_for
from mptui.engine.search.calibration import load_calibration
from mptui.engine.search.scoring import Scorer
from mptui.engine.search.settings import CalibrationSpec
from mptui.engine.search.setup import faithful_label_mask
from mptui.engine.search.structures import Structure


def silent_blocks_model(path, out):
    """Every attention and MLP adds exactly zero, so every candidate ties with every other."""
    model = AutoModelForCausalLM.from_pretrained(path)
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.data.zero_()
        layer.mlp.down_proj.weight.data.zero_()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    return out


def ids(plan):
    return [Structure.from_dict(step["structure"]).id for step in plan["steps"]]


def test_ties_go_to_canonical_order_and_block_count_stops_blocks(
    tiny_model_dir, calibration_file, tmp_path
):
    model = silent_blocks_model(tiny_model_dir("llama"), tmp_path / "silent")
    plan = prune(
        str(model), calibration=str(calibration_file), target_ratio=0.9, distribution="1:8:1",
        seqlen=32, mlp_group=40, block_count=5,
    )  # fmt: skip
    steps = ids(plan)
    assert steps[:5] == ["L0.attn", "L1.attn", "L2.attn", "L3.attn", "L0.mlp"]
    # then MLP widths: L0's MLP is gone; layer 1 wins every tie until only its last,
    # partial group (176 - 4 * 40 = 16 channels) is left, then layer 2 starts
    assert steps[5:10] == ["L1.mlp-40"] * 4 + ["L2.mlp-40"]
    widths = [s["structure"]["width_after"] for s in plan["steps"][5:9]]
    assert widths == [136, 96, 56, 16]
    assert len({step["score"] for step in plan["steps"]}) == 1


def test_ratio_and_params_are_exact_after_every_step(tiny_model_dir, calibration_file):
    from mptui.engine.api import Engine, PruneSettings, RunRequest
    from mptui.engine.control import events as ev

    settings = PruneSettings.with_distribution(
        0.3, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32), mlp_group=40
    )
    engine = Engine(RunRequest(str(tiny_model_dir("mistral")), settings))
    counted = []

    def check(event):
        if isinstance(event, ev.StepCommitted):
            model = engine.pruning.model
            counted.append((event.params, model.num_parameters(), event.ratio))

    engine.subscribe(check)
    plan = engine.run().plan
    dense = plan["model"]["params_dense"]
    assert counted and all(params == actual for params, actual, _ in counted)
    assert all(ratio == pytest.approx(1 - params / dense) for params, _, ratio in counted)
    assert all(s["ratio"] < 0.3 for s in plan["steps"][:-1]) and plan["steps"][-1]["ratio"] >= 0.3


def test_faithful_multipruner(tiny_model_dir, tmp_path):
    import datasets

    folder = tmp_path / "alpaca"
    rows = [
        f"Instruction {i}: explain item {i % 37}. Response: it is {i * 7 % 101}."
        for i in range(4000)
    ]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": rows})}).save_to_disk(
        str(folder)
    )
    plan = prune(
        str(tiny_model_dir("llama")), calibration=str(folder), target_ratio=0.2,
        distribution="50:50:0", seqlen=64, mlp_group=40, faithful="multipruner",
    )  # fmt: skip
    assert plan["settings"]["faithful"] == "multipruner"
    assert plan["settings"]["count_removed_norms"] is True
    # blocks are scored on 256 rows and widths on 128: two calibration sets, two dense scores
    assert plan["dense_scores"]["blocks"] != plan["dense_scores"]["mlp_channels"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    dense = sum(p.numel() for p in model.parameters())
    assert plan["model"]["params_dense"] == dense
    blocks = [s for s in plan["steps"] if s["dimension"] == "blocks"]
    # MultiPruner's count: the removed sub-block's own tensors go, its norm weight still counts
    first = blocks[0]["structure"] if blocks else {}
    assert first.get("kind") in ("attn_block", "mlp_block")
    layer = model.model.layers[first["layer"]]
    block = layer.self_attn if first["kind"] == "attn_block" else layer.mlp
    assert blocks[0]["params"] == dense - sum(p.numel() for p in block.parameters())


def test_faithful_label_masks():
    eos = types.SimpleNamespace(eos_token_id=7)
    config = types.SimpleNamespace(pad_token_id=3)
    assert faithful_label_mask("multipruner", eos, config) == 7
    assert faithful_label_mask("blockpruner", eos, config) == 3
    assert faithful_label_mask("multipruner", types.SimpleNamespace(eos_token_id=0), config) is None
    assert faithful_label_mask(None, eos, config) is None


def test_label_mask_excludes_tokens_from_the_mean(tiny_model_dir, calibration_file):
    path = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    chunks = load_calibration(
        CalibrationSpec(str(calibration_file), 0, 32), AutoTokenizer.from_pretrained(path)
    )
    masked_id = int(chunks[0, 5])
    scorer = Scorer(model, adapter_for(model), chunks, 4, ignore_label_id=masked_id)
    with torch.inference_mode():
        logits = model(chunks).logits.float()
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), chunks[:, 1:], reduction="none"
    ).double()
    keep = chunks[:, 1:] != masked_id
    per_sequence = (nll * keep).sum(1) / keep.sum(1)
    assert scorer.score() == pytest.approx(per_sequence.mean().exp().item(), rel=1e-5)


def test_out_of_memory_lowers_the_batch_then_explains(tiny_model_dir, calibration_file):
    path = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    chunks = load_calibration(
        CalibrationSpec(str(calibration_file), 0, 32), AutoTokenizer.from_pretrained(path)
    )
    warnings: list[str] = []
    scorer = Scorer(model, adapter_for(model), chunks, 8, on_warning=warnings.append)
    expected = scorer.score()
    limit = {"batch": 2}

    def fail_on_big_batches(module, args):
        if args[0].shape[0] > limit["batch"]:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = model.model.layers[2].mlp.register_forward_pre_hook(fail_on_big_batches)
    assert scorer.score() == pytest.approx(expected, rel=1e-6)
    assert scorer.batch_size == 2
    assert warnings[-1] == "out of memory while scoring; batch size lowered to 2"
    limit["batch"] = 0
    with pytest.raises(OutOfMemory, match="lower seqlen or nsamples"):
        scorer.score()
    handle.remove()


def test_faithful_blockpruner(tiny_model_dir, tmp_path):
    import datasets

    folder = tmp_path / "alpaca"
    rows = [f"Row {i}: the answer is {i * 13 % 97} because {i % 11}." for i in range(3000)]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": rows})}).save_to_disk(
        str(folder)
    )
    plan = prune(
        str(tiny_model_dir("qwen2")), calibration=str(folder), target_ratio=0.5, seqlen=64,
        faithful="blockpruner", block_count=3,
    )  # fmt: skip
    assert plan["settings"]["faithful"] == "blockpruner"
    assert plan["settings"]["distribution"] == [1.0, 0.0, 0.0]
    assert [s["dimension"] for s in plan["steps"]] == ["blocks"] * 3
    assert plan["settings"]["count_removed_norms"] is False
