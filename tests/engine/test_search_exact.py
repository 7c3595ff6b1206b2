"""docs/method.md §4: the plan with the prefix cache equals the plan without it and the plan of
a plain, naive search written here, independent of the engine's surgery.

The naive search ranks channels by hand (the L1 rules of docs/method.md §3), removes a structure
by zeroing every weight it owns (the sub-block adds exactly zero then, as if it were gone;
removed channels give no contribution, as if sliced off), counts the parameters from the zeroed
entries, and scores every candidate with a full forward of the whole calibration set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.tiny import FAMILIES
from mptui.engine.api import CalibrationSpec, prune
from mptui.engine.api import events as ev
from mptui.engine.search.calibration import load_calibration
from mptui.engine.search.structures import Structure

TARGET = 0.35
SHARES = {"blocks": 0.3, "mlp_channels": 0.4, "attn_heads": 0.3}
MLP_GROUP = 40
SEQLEN = 32
#: The compiled search and its eager twin read 5 of the 6 calibration documents: 22 rows, 11
#: full batches of 2, so each sub-block compiles for one batch size (a last batch of 1, as all
#: 23 rows give, doubles the graphs and the compile time). The comparisons with the naive
#: search use all 23 rows, last batch included.
COMPILED_NSAMPLES = 5


def naive_perplexity(model, chunks: torch.Tensor, batch_size: int) -> float:
    nll = []
    with torch.inference_mode():
        for start in range(0, len(chunks), batch_size):
            ids = chunks[start : start + batch_size]
            logits = model(ids).logits.float()
            loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            nll.append(loss.double().mean(dim=1))
    return math.exp(torch.cat(nll).mean().item())


#: (parameter, axis that holds channels, offset of the first channel, ranks channels?)
Entry = tuple[nn.Parameter, int, int, bool]


@dataclass
class Layer:
    """Where one decoder layer keeps its channels, written out per family from the
    transformers modules (not from the engine's adapters)."""

    attn_block: tuple[nn.Module, nn.Module]  # norm, attention
    mlp_block: tuple[nn.Module, nn.Module]  # norm, MLP
    mlp: list[Entry]  # channel j of the MLP at offset + j
    q: list[Entry]  # query channel c (head c // head_dim) at offset + c
    kv: list[Entry]  # key/value channel c (KV head c // head_dim) at offset + c


def layer_layout(model, index: int) -> Layer:
    config = model.config
    if config.model_type == "gpt2":
        layer, hidden = model.transformer.h[index], config.hidden_size
        c_attn, c_fc = layer.attn.c_attn, layer.mlp.c_fc  # Conv1D: weights are (in, out)
        return Layer(
            (layer.ln_1, layer.attn), (layer.ln_2, layer.mlp),
            mlp=[(c_fc.weight, 1, 0, True), (c_fc.bias, 0, 0, False),
                 (layer.mlp.c_proj.weight, 0, 0, False)],
            q=[(c_attn.weight, 1, 0, True), (c_attn.bias, 0, 0, False),
               (layer.attn.c_proj.weight, 0, 0, False)],
            kv=[(c_attn.weight, 1, hidden, True), (c_attn.bias, 0, hidden, False),
                (c_attn.weight, 1, 2 * hidden, True), (c_attn.bias, 0, 2 * hidden, False)],
        )  # fmt: skip
    layer = model.model.layers[index]
    attn, mlp = layer.self_attn, layer.mlp
    blocks = (layer.input_layernorm, attn), (layer.post_attention_layernorm, mlp)
    if config.model_type == "phi3":  # fused rows: gate | up, and q | k | v
        width, q_rows = config.intermediate_size, attn.o_proj.weight.shape[1]
        kv_rows = (attn.qkv_proj.weight.shape[0] - q_rows) // 2
        qkv = attn.qkv_proj.weight
        return Layer(
            *blocks,
            mlp=[(mlp.gate_up_proj.weight, 0, 0, True), (mlp.gate_up_proj.weight, 0, width, True),
                 (mlp.down_proj.weight, 1, 0, False)],
            q=[(qkv, 0, 0, True), (attn.o_proj.weight, 1, 0, False)],
            kv=[(qkv, 0, q_rows, True), (qkv, 0, q_rows + kv_rows, True)],
        )  # fmt: skip

    def rows(linear: nn.Linear) -> list[Entry]:
        bias = [(linear.bias, 0, 0, False)] if linear.bias is not None else []
        return [(linear.weight, 0, 0, True), *bias]

    return Layer(
        *blocks,
        mlp=[*rows(mlp.gate_proj), *rows(mlp.up_proj), (mlp.down_proj.weight, 1, 0, False)],
        q=[*rows(attn.q_proj), (attn.o_proj.weight, 1, 0, False)],
        kv=[*rows(attn.k_proj), *rows(attn.v_proj)],
    )


def row_l1(entries: list[Entry], count: int) -> torch.Tensor:
    """Sum, over the ranking entries in order, of each channel's L1 norm (float32)."""
    total = torch.zeros(count)
    for tensor, dim, offset, scored in entries:
        if scored:
            total = total + tensor.detach().float().abs().sum(dim=1 - dim)[offset : offset + count]
    return total


class NaiveSearch:
    """docs/method.md §3 greedy search on a model whose removals are zeroed weights."""

    def __init__(self, path, chunks: torch.Tensor, batch_size: int):
        self.model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
        self.chunks, self.batch_size = chunks, batch_size
        config = self.model.config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.q_per_kv = heads // kv_heads
        self.attn_group = self.head_dim * self.q_per_kv  # one KV group: the default step
        self.layers = [layer_layout(self.model, i) for i in range(config.num_hidden_layers)]
        self.removed = {p: torch.zeros_like(p, dtype=torch.bool) for p in self.model.parameters()}
        self.dense = sum(p.numel() for p in self.model.parameters())
        self.blocks_gone: set[tuple[str, int]] = set()
        mlp_width = config.n_inner if config.model_type == "gpt2" else config.intermediate_size
        self.width = {"mlp_channels": [mlp_width] * len(self.layers),
                      "attn_heads": [kv_heads * self.attn_group] * len(self.layers)}  # fmt: skip
        # L1 order on the dense weights, most important first, stable on ties
        self.order: dict[str, list[torch.Tensor]] = {"mlp_channels": [], "attn_heads": []}
        for layer in self.layers:
            self.order["mlp_channels"].append(descending(row_l1(layer.mlp, mlp_width)))
            q = row_l1(layer.q, heads * self.head_dim).view(kv_heads, self.q_per_kv, -1)
            kv = row_l1(layer.kv, kv_heads * self.head_dim).view(kv_heads, 1, -1)
            group_scores = (q + kv).reshape(kv_heads, -1).mean(dim=1)  # query rows of a group
            self.order["attn_heads"].append(descending(group_scores))

    def params(self) -> int:
        return self.dense - sum(int(mask.sum()) for mask in self.removed.values())

    def candidates(self, dimension: str) -> list[Structure]:
        layers = range(len(self.layers))
        if dimension == "blocks":
            return [
                Structure(kind, i)
                for kind, block in (("attn_block", "attn"), ("mlp_block", "mlp"))
                for i in layers
                if (block, i) not in self.blocks_gone
            ]
        group = MLP_GROUP if dimension == "mlp_channels" else self.attn_group
        block = "mlp" if dimension == "mlp_channels" else "attn"
        return [
            Structure(dimension, i, remove=group, width_after=self.width[dimension][i] - group)
            for i in layers
            if (block, i) not in self.blocks_gone and self.width[dimension][i] - group > 0
        ]

    def owned(self, structure: Structure) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, boolean mask of its entries) that ``structure`` removes."""
        layer = self.layers[structure.layer]
        if structure.is_block:
            norm, module = layer.attn_block if structure.kind == "attn_block" else layer.mlp_block
            params = [*norm.parameters(), *module.parameters()]
            return [(p, torch.ones_like(p, dtype=torch.bool)) for p in params]
        order = self.order[structure.kind][structure.layer]
        now, after = self.width[structure.kind][structure.layer], structure.width_after
        if structure.kind == "mlp_channels":
            spans = [(layer.mlp, order[after:now])]
        else:  # whole KV groups: their query heads, and the K/V head they share
            groups = order[after // self.attn_group : now // self.attn_group]
            spans = [(layer.q, expand(groups, self.attn_group)),
                     (layer.kv, expand(groups, self.head_dim))]  # fmt: skip
        out = []
        for entries, channels in spans:
            for tensor, dim, offset, _ in entries:
                mask = torch.zeros_like(tensor, dtype=torch.bool)
                out.append((tensor, mask.index_fill_(dim, channels + offset, True)))
        return out

    def score(self, structure: Structure) -> float:
        owned = self.owned(structure)
        saved = [tensor.detach().clone() for tensor, _ in owned]
        with torch.no_grad():
            for tensor, mask in owned:
                tensor.masked_fill_(mask, 0.0)
        try:
            return naive_perplexity(self.model, self.chunks, self.batch_size)
        finally:
            with torch.no_grad():
                for (tensor, _), original in zip(owned, saved, strict=True):
                    tensor.copy_(original)

    def commit(self, structure: Structure) -> None:
        with torch.no_grad():
            for tensor, mask in self.owned(structure):
                tensor.masked_fill_(mask, 0.0)
                self.removed[tensor] |= mask
        if structure.is_block:
            block = "attn" if structure.kind == "attn_block" else "mlp"
            self.blocks_gone.add((block, structure.layer))
        else:
            self.width[structure.kind][structure.layer] = structure.width_after

    def run(self) -> list[tuple[str, float, int]]:
        steps, share = [], 0.0
        for dimension in ("blocks", "mlp_channels", "attn_heads"):
            share += SHARES[dimension]
            while 1 - self.params() / self.dense < TARGET * share:
                candidates = self.candidates(dimension)
                if not candidates:
                    break
                scores = [self.score(candidate) for candidate in candidates]
                best = scores.index(min(scores))  # ties: the first in canonical order
                self.commit(candidates[best])
                steps.append((candidates[best].id, scores[best], self.params()))
        return steps


def descending(scores: torch.Tensor) -> torch.Tensor:
    return torch.sort(scores, descending=True, stable=True).indices


def expand(groups: torch.Tensor, size: int) -> torch.Tensor:
    """Channel indices of whole groups of ``size`` channels."""
    return (groups[:, None] * size + torch.arange(size)[None, :]).reshape(-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_uncached_and_naive_plans_agree(tiny_model_dir, calibration_file, family, tmp_path):
    path = tiny_model_dir(family)
    # Dynamo's caches and recompile counts are per process: fresh ones, so that this family's
    # compiles never reach the limit on counts an earlier test ran up (and fall back to eager).
    torch._dynamo.reset()
    plans, events = {}, []
    for key, cached, compile_mode, nsamples in (
        (True, True, "off", 0),
        (False, False, "off", 0),
        ("eager", True, "off", COMPILED_NSAMPLES),
        ("compiled", True, "aot_eager", COMPILED_NSAMPLES),
    ):
        plans[key] = prune(
            str(path),
            calibration=str(calibration_file),
            nsamples=nsamples,
            target_ratio=TARGET,
            distribution="30:40:30",
            seqlen=SEQLEN,
            batch_size=2,
            mlp_group=MLP_GROUP,
            prefix_cache=cached,
            compile=compile_mode,
            cache_dir=tmp_path,
            subscribers=[events.append],
        )
    spec = CalibrationSpec(str(calibration_file), 0, SEQLEN)
    chunks = load_calibration(spec, AutoTokenizer.from_pretrained(path), tmp_path)
    naive = NaiveSearch(path, chunks, batch_size=2).run()

    def ids(plan):
        return [Structure.from_dict(s["structure"]).id for s in plan["steps"]]

    assert ids(plans[True]) == ids(plans[False]) == [structure for structure, _, _ in naive]
    # torch.compile'd sub-blocks, compiled to the end (no fallback to eager): the same plan
    notices = [e.message for e in events if isinstance(e, ev.Notice)]
    assert not [notice for notice in notices if "torch.compile" in notice], notices
    assert ids(plans["compiled"]) == ids(plans["eager"])
    assert {s["dimension"] for s in plans["compiled"]["steps"]} == set(SHARES)
    for compiled, eager in zip(plans["compiled"]["steps"], plans["eager"]["steps"], strict=True):
        assert compiled["score"] == pytest.approx(eager["score"], rel=1e-6)
    assert {s["dimension"] for s in plans[True]["steps"]} == set(SHARES)
    for cached, uncached, (_, expected, params) in zip(
        plans[True]["steps"], plans[False]["steps"], naive, strict=True
    ):
        assert cached["score"] == pytest.approx(uncached["score"], rel=1e-9)
        assert cached["score"] == pytest.approx(expected, rel=1e-5)
        assert cached["params"] == uncached["params"] == params
    assert plans[True]["steps"][-1]["ratio"] >= TARGET
    assert plans[True]["steps"][-2]["ratio"] < TARGET  # the strict stop: no step past the target
