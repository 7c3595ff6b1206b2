"""docs/method.md §4: the plan with the prefix cache equals the plan without it and the plan
of a plain, naive search written here (a full forward of a fresh copy per candidate)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from mptui.engine.adapters import adapter_for
from mptui.engine.api import CalibrationSpec, prune
from mptui.engine.calibration import load_calibration
from mptui.engine.structures import Structure
from mptui.engine.tiny import FAMILIES

TARGET = 0.35
SHARES = {"blocks": 0.3, "mlp_channels": 0.4, "attn_heads": 0.3}
MLP_GROUP = 40
SEQLEN = 32


def naive_perplexity(model, chunks: torch.Tensor, batch_size: int) -> float:
    nll = []
    with torch.inference_mode():
        for start in range(0, len(chunks), batch_size):
            ids = chunks[start : start + batch_size]
            logits = model(ids).logits.float()
            loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            nll.append(loss.double().mean(dim=1))
    return math.exp(torch.cat(nll).mean().item())


def naive_candidates(adapter, dimension: str, attn_group: int) -> list[Structure]:
    layers = range(adapter.num_layers)
    if dimension == "blocks":
        return [Structure("attn_block", i) for i in layers if adapter.has_block(i, "attn")] + [
            Structure("mlp_block", i) for i in layers if adapter.has_block(i, "mlp")
        ]
    out = []
    for i in layers:
        if dimension == "mlp_channels":
            width, group = adapter.mlp_width(i), MLP_GROUP
        else:
            width, group = adapter.attn_groups(i) * adapter.attn_group_channels, attn_group
        if width - group > 0:
            out.append(Structure(dimension, i, remove=group, width_after=width - group))
    return out


def naive_search(path, chunks, batch_size):
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    adapter = adapter_for(model)
    for layer in range(adapter.num_layers):
        adapter.reorder_layer(layer)
    attn_group = adapter.attn_group_channels
    dense = model.num_parameters()
    steps, share = [], 0.0
    for dimension in ("blocks", "mlp_channels", "attn_heads"):
        share += SHARES[dimension]
        while 1 - model.num_parameters() / dense < TARGET * share:
            candidates = naive_candidates(adapter, dimension, attn_group)
            if not candidates:
                break
            scores = []
            for candidate in candidates:
                trial = copy.deepcopy(model)
                adapter_for(trial).commit(candidate)
                scores.append(naive_perplexity(trial, chunks, batch_size))
            best = scores.index(min(scores))
            adapter.commit(candidates[best])
            steps.append((candidates[best].id, scores[best]))
    return steps


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_uncached_and_naive_plans_agree(tiny_model_dir, calibration_file, family, tmp_path):
    path = tiny_model_dir(family)
    plans = {}
    for cached in (True, False):
        plans[cached] = prune(
            str(path),
            calibration=str(calibration_file),
            target_ratio=TARGET,
            distribution="30:40:30",
            seqlen=SEQLEN,
            batch_size=2,
            mlp_group=MLP_GROUP,
            prefix_cache=cached,
            cache_dir=tmp_path,
        )
    spec = CalibrationSpec(str(calibration_file), 0, SEQLEN)
    chunks = load_calibration(spec, AutoTokenizer.from_pretrained(path), tmp_path)
    naive = naive_search(path, chunks, batch_size=2)

    def ids(plan):
        return [Structure.from_dict(s["structure"]).id for s in plan["steps"]]

    assert ids(plans[True]) == ids(plans[False]) == [structure for structure, _ in naive]
    assert {s["dimension"] for s in plans[True]["steps"]} == set(SHARES)
    for cached, uncached, (_, expected) in zip(
        plans[True]["steps"], plans[False]["steps"], naive, strict=True
    ):
        assert cached["score"] == pytest.approx(uncached["score"], rel=1e-9)
        assert cached["score"] == pytest.approx(expected, rel=1e-5)
    assert plans[True]["steps"][-1]["ratio"] >= TARGET
    assert plans[True]["steps"][-2]["ratio"] < TARGET  # the strict stop: no step past the target
