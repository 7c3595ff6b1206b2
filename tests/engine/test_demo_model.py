"""The shipped demo model is real: trained, GQA, small, and its blocks matter unevenly.

What its build report claims is recomputed here from the shipped files with plain
transformers, so a stale report or a changed model fails.
"""

from __future__ import annotations

import contextlib
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from mptui.cli import DEMO_DIR
from mptui.demo import build

MODEL_DIR = DEMO_DIR / "model"
REPORT = MODEL_DIR / "build_report.json"


def read_report() -> dict:
    return json.loads(REPORT.read_text())


@pytest.fixture(scope="module")
def demo():
    """The shipped model in float32 and the shipped validation text cut into rows."""
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    # documents are separated by blank lines, joined again by one, tokenized once, tail dropped
    text = (DEMO_DIR / "validation.txt").read_text(encoding="utf-8")
    documents = [doc.strip() for doc in re.split(r"\n\s*\n", text) if doc.strip()]
    ids = tokenizer("\n\n".join(documents))["input_ids"]
    seqlen = read_report()["seqlen"]
    rows = torch.tensor(ids[: len(ids) // seqlen * seqlen]).view(-1, seqlen)
    return model, rows


def perplexity(model, rows: torch.Tensor) -> float:
    """exp of the mean over rows of each row's mean token NLL (float32 logits)."""
    per_row = []
    with torch.inference_mode():
        for batch in rows.split(8):
            logits = model(batch).logits.float()
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch[:, 1:], reduction="none")
            per_row.append(nll.double().mean(dim=1))
    return math.exp(torch.cat(per_row).mean().item())


@contextlib.contextmanager
def without(model, name: str):
    """Sub-block ``L<i>.attn`` / ``L<i>.mlp`` removed: its output projection zeroed, so it
    adds exactly nothing to the residual stream."""
    layer_name, kind = name.split(".")
    layer = model.model.layers[int(layer_name[1:])]
    weight = layer.self_attn.o_proj.weight if kind == "attn" else layer.mlp.down_proj.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.zero_()
    try:
        yield
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_demo_model_is_small_and_the_report_describes_its_files(demo):
    model, _ = demo
    config = AutoConfig.from_pretrained(MODEL_DIR)
    assert config.model_type == "llama"
    assert config.num_hidden_layers >= 8
    assert config.num_key_value_heads < config.num_attention_heads
    report = read_report()
    sizes = {f.name: f.stat().st_size for f in MODEL_DIR.iterdir()}
    assert sum(sizes.values()) <= 15 * 2**20
    assert report["size_bytes"] == sum(sizes.values()) - sizes[REPORT.name]
    assert report["params"] == sum(p.numel() for p in model.parameters())
    assert (report["steps"], report["batch"], report["seqlen"]) == (
        build.STEPS,
        build.BATCH,
        build.SEQLEN,
    )


def test_demo_tokenizer_and_text_are_shipped():
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    text = (DEMO_DIR / "calibration.txt").read_text()
    assert len(text) > 1_000_000
    assert (DEMO_DIR / "validation.txt").stat().st_size > 10_000
    ids = tokenizer("def main():\n    return 0")["input_ids"]
    assert tokenizer.decode(ids) == "def main():\n    return 0"


def test_validation_perplexity_and_block_removals_match_the_report(demo):
    """The report rounds to 2 decimals. Every removal costs a full pass over the validation
    text, so only the two that the "uneven" claim rests on are recomputed: the worst and the
    most harmless."""
    model, rows = demo
    report = read_report()
    assert report["val_tokens"] == rows.numel()
    dense = perplexity(model, rows)
    assert dense == pytest.approx(report["val_ppl"], abs=0.01)
    assert dense < 100
    claimed = report["block_removal_ppl"]
    assert len(claimed) == 2 * model.config.num_hidden_layers
    worst, mildest = max(claimed, key=claimed.get), min(claimed, key=claimed.get)
    measured = {}
    for name in (worst, mildest):
        with without(model, name):
            measured[name] = perplexity(model, rows)
        assert measured[name] == pytest.approx(claimed[name], abs=0.01), name
    assert measured[worst] / dense > 10
    assert measured[mildest] < 1.05 * dense
