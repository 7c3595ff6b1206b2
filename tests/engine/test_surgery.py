"""Real surgery on every family: reorder, trial, commit, undo, parameter counts, generation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from bench.tiny import FAMILIES
from mptui.engine.errors import UnsupportedModel
from mptui.engine.model.adapters import adapter_for
from mptui.engine.search.structures import Structure


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()


def logits(model, ids):
    with torch.inference_mode():
        return model(ids).logits


def one_of_each(adapter) -> list[Structure]:
    """A width step at layer 1, a head step at layer 0, then whole blocks elsewhere."""
    heads = adapter.attn_group_channels
    return [
        Structure("mlp_channels", 1, remove=40, width_after=adapter.mlp_width(1) - 40),
        Structure("attn_heads", 0, remove=heads, width_after=heads * (adapter.attn_groups(0) - 1)),
        Structure("attn_block", 2),
        Structure("mlp_block", 3),
    ]


@pytest.fixture
def ids():
    return torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", FAMILIES)
def test_reorder_keeps_outputs(tiny_model_dir, family, ids):
    model = load(tiny_model_dir(family))
    adapter = adapter_for(model)
    before = logits(model, ids)
    mlp_scores = adapter.mlp_channel_scores(0)
    for layer in range(adapter.num_layers):
        adapter.reorder_layer(layer)
    torch.testing.assert_close(logits(model, ids), before, rtol=1e-5, atol=1e-5)
    # after the reorder the channel scores are descending
    reordered = adapter.mlp_channel_scores(0)
    expected = torch.sort(mlp_scores, descending=True, stable=True).values
    torch.testing.assert_close(reordered, expected, rtol=1e-6, atol=1e-6)
    groups = adapter.attn_group_scores(0)
    assert torch.all(groups[:-1] >= groups[1:])


@pytest.mark.parametrize("family", FAMILIES)
def test_trial_commit_undo_and_counts(tiny_model_dir, family, ids):
    model = load(tiny_model_dir(family))
    adapter = adapter_for(model)
    for layer in range(adapter.num_layers):
        adapter.reorder_layer(layer)
    history = []
    for structure in one_of_each(adapter):
        before = logits(model, ids)
        with adapter.trial(structure):
            trial = logits(model, ids)
        torch.testing.assert_close(logits(model, ids), before, rtol=0, atol=0)
        params_before = model.num_parameters()
        freed = adapter.params_freed(structure)
        history.append((adapter.commit(structure), before))
        torch.testing.assert_close(logits(model, ids), trial, rtol=1e-6, atol=1e-6)
        assert model.num_parameters() == params_before - freed
        assert freed > 0
    for record, before in reversed(history):
        adapter.undo(record)
        torch.testing.assert_close(logits(model, ids), before, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_removed_block_leaves_no_parameters(tiny_model_dir, family):
    model = load(tiny_model_dir(family))
    adapter = adapter_for(model)
    layer = adapter.layers[1]
    adapter.commit(Structure("attn_block", 1))
    adapter.commit(Structure("mlp_block", 1))
    assert sum(p.numel() for p in layer.parameters()) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_with_kv_cache_after_pruning(tiny_model_dir, family):
    model = load(tiny_model_dir(family))
    adapter = adapter_for(model)
    for layer in range(adapter.num_layers):
        adapter.reorder_layer(layer)
    # layer 0's attention goes too: transformers reads the cache length from layer 0
    for structure in [*one_of_each(adapter), Structure("attn_block", 0)]:
        adapter.commit(structure)
    prompt = torch.tensor([[5, 17, 33, 2, 91, 8]])
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    with_cache = model.generate(prompt, use_cache=True, **kwargs)
    without = model.generate(prompt, use_cache=False, **kwargs)
    assert with_cache.shape[1] == prompt.shape[1] + 12
    assert torch.equal(with_cache, without)


def test_width_slices_are_real_copies(tiny_model_dir):
    """A commit slices once: the weight is a fresh, smaller tensor, not a mask or a view."""
    model = load(tiny_model_dir("llama"))
    adapter = adapter_for(model)
    gate = adapter.layers[0].mlp.gate_proj
    old = gate.weight
    adapter.commit(Structure("mlp_channels", 0, remove=40, width_after=adapter.mlp_width(0) - 40))
    assert gate.weight.shape[0] == old.shape[0] - 40
    assert gate.out_features == gate.weight.shape[0]
    assert gate.weight.untyped_storage().data_ptr() != old.untyped_storage().data_ptr()
    assert gate.weight.untyped_storage().nbytes() == gate.weight.numel() * 4


def test_unsupported_architecture_is_one_clear_error():
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(
        BertConfig(
            num_hidden_layers=1,
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=100,
        )
    )
    with pytest.raises(UnsupportedModel, match="not supported; supported: llama, mistral"):
        adapter_for(model)
