"""The tiny model helper: every family loads offline, runs, is seeded, and has the shapes
that the engine's adapters must cope with (GQA, Qwen3's own head_dim, biases, ties)."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from mptui.engine.tiny import FAMILIES, build_tiny_model, tiny_text, tiny_tokenizer

GQA_FAMILIES = [name for name in FAMILIES if name != "gpt2"]


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def is_norm(name: str) -> bool:
    return "norm" in name or ".ln_" in name


def test_loads_offline_and_gives_finite_logits(tiny_model_dir, family):
    folder = tiny_model_dir(family)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == model.config.eos_token_id
    ids = tokenizer(tiny_text(1)[0], return_tensors="pt")["input_ids"][:, :48]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 512)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_seed_decides_the_weights_and_a_build_is_fast(family, tmp_path):
    build_tiny_model(family, tmp_path / "warm-up")  # first build imports the modelling code
    started = time.perf_counter()
    first = build_tiny_model(family, tmp_path / "a", seed=3)
    seconds = time.perf_counter() - started
    print(f"build_tiny_model({family!r}): {seconds * 1000:.0f} ms")
    same, other = weights(first), weights(build_tiny_model(family, tmp_path / "b", seed=3))
    assert same.keys() == other.keys()
    assert all(torch.equal(same[name], other[name]) for name in same)
    different = weights(build_tiny_model(family, tmp_path / "c", seed=4))
    assert not any(torch.equal(same[name], different[name]) for name in same)


def test_weights_are_perturbed_so_blocks_differ(tiny_model_dir, family):
    state = weights(tiny_model_dir(family))
    scales = torch.cat([t for n, t in state.items() if is_norm(n) and n.endswith(".weight")])
    assert 0.8 < scales.mean() < 1.2 and scales.std() > 0.1
    shifts = [t for n, t in state.items() if is_norm(n) and n.endswith(".bias")]
    assert all(t.abs().mean() < 0.2 for t in shifts)  # biases stay near zero, unlike scales
    matrices = [t for t in state.values() if t.dim() == 2]
    assert all(0.02 <= t.std() <= 0.2 for t in matrices)
    layer = "transformer.h" if family == "gpt2" else "model.layers"
    first = {n.split(".", 3)[3]: t for n, t in state.items() if n.startswith(f"{layer}.0.")}
    second = {n.split(".", 3)[3]: t for n, t in state.items() if n.startswith(f"{layer}.1.")}
    assert first.keys() == second.keys()
    assert not any(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.parametrize("family", GQA_FAMILIES)
def test_grouped_query_attention(tiny_model_dir, family):
    config = AutoModelForCausalLM.from_pretrained(tiny_model_dir(family)).config
    assert config.num_key_value_heads < config.num_attention_heads
    assert config.num_attention_heads % config.num_key_value_heads == 0


def test_gpt2_has_plain_multi_head_attention_and_tied_embeddings(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2"))
    assert model.config.n_head == 4 and model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.parametrize("family", GQA_FAMILIES)
def test_untied_embeddings(tiny_model_dir, family):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(family))
    output, embedding = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert output is not embedding and not torch.equal(output, embedding)


def test_qwen3_head_dim_is_not_hidden_over_heads(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("qwen3"))
    config = model.config
    assert config.head_dim != config.hidden_size // config.num_attention_heads
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.out_features == config.num_attention_heads * config.head_dim
    assert attention.k_proj.out_features == config.num_key_value_heads * config.head_dim


def test_qwen2_has_attention_biases(tiny_model_dir):
    attention = AutoModelForCausalLM.from_pretrained(tiny_model_dir("qwen2")).model.layers[0]
    for projection in ("q_proj", "k_proj", "v_proj"):
        assert getattr(attention.self_attn, projection).bias is not None
    assert attention.self_attn.o_proj.bias is None


def test_intermediate_size_fits_no_usual_group(tiny_model_dir, family):
    config = AutoModelForCausalLM.from_pretrained(tiny_model_dir(family)).config
    width = config.n_inner if family == "gpt2" else config.intermediate_size
    assert all(width % group for group in (32, 64, 128))


def test_overrides_and_layer_count_reach_the_config(tmp_path):
    folder = build_tiny_model("llama", tmp_path, num_layers=2, intermediate_size=48)
    config = AutoModelForCausalLM.from_pretrained(folder).config
    assert config.num_hidden_layers == 2 and config.intermediate_size == 48


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown family 'bloom'"):
        build_tiny_model("bloom", tmp_path)


def test_tokenizer_is_cached_and_round_trips():
    tokenizer = tiny_tokenizer()
    assert tokenizer is tiny_tokenizer() and len(tokenizer) == 512
    text = tiny_text(1)[0]
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_calibration_text_is_deterministic():
    assert tiny_text(20) == tiny_text(20) and len(tiny_text(20)) == 20
    assert tiny_text(20, seed=1) != tiny_text(20)
    assert all(isinstance(doc, str) and len(doc) > 40 for doc in tiny_text(50))
