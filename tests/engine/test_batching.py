"""The batch size chosen from memory: even batches that fit, the same scores as any other."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from mptui.engine.model.adapters import adapter_for
from mptui.engine.model.batching import activation_bytes_per_row, auto_batch_size, weight_bytes
from mptui.engine.search.scoring import Scorer


@pytest.fixture(scope="module")
def llama(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).eval()
    return model, adapter_for(model)


@pytest.mark.parametrize(("fit", "rows", "expected"), [(3, 10, 3), (32, 35, 18), (64, 35, 35),
                                                       (0, 4, 1)])  # fmt: skip
def test_rows_are_split_evenly_into_the_fewest_batches_that_fit(llama, fit, rows, expected):
    model, adapter = llama
    per_row = activation_bytes_per_row(adapter, 16, 4)
    memory = weight_bytes(model, torch.device("cpu")) + 4 * fit * per_row  # a quarter: fit rows
    assert auto_batch_size(model, adapter, rows, 16, memory=memory) == expected


def test_a_scorer_without_a_batch_size_chooses_one_and_scores_the_same(llama):
    model, adapter = llama
    chunks = torch.randint(0, 200, (5, 16), generator=torch.Generator().manual_seed(0))
    chosen = Scorer(model, adapter, chunks)
    assert chosen.batch_size == 5  # a tiny model: every row in one forward
    fixed = Scorer(model, adapter, chunks, batch_size=2)
    assert chosen.score() == pytest.approx(fixed.score(), rel=1e-6)
    assert chosen.score(rows=2) == pytest.approx(fixed.score(rows=2), rel=1e-6)
    assert chosen.score(rows=2) != pytest.approx(chosen.score(), rel=1e-6)


def test_the_loss_never_holds_float32_logits_for_a_whole_batch(llama, monkeypatch):
    """The LM head runs on slices of at most LOSS_CHUNK_ELEMENTS logits; the score is the same."""
    import mptui.engine.search.scoring as scoring

    model, adapter = llama
    chunks = torch.randint(0, 200, (4, 16), generator=torch.Generator().manual_seed(0))
    whole = Scorer(model, adapter, chunks, batch_size=4).score()
    vocab = model.lm_head.weight.shape[0]
    monkeypatch.setattr(scoring, "LOSS_CHUNK_ELEMENTS", 4 * 3 * vocab)  # 3 tokens of 4 rows
    sizes: list[int] = []
    hook = model.lm_head.register_forward_hook(lambda m, i, out: sizes.append(out.numel()))
    try:
        sliced = Scorer(model, adapter, chunks, batch_size=4).score()
    finally:
        hook.remove()
    assert max(sizes) == 4 * 3 * vocab < 4 * 15 * vocab  # never the batch's 15 positions at once
    assert sliced == pytest.approx(whole, rel=1e-9)
