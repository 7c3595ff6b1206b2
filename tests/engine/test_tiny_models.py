"""The tiny model helper: every family loads offline, runs, is seeded, and has the shapes
that the engine's adapters must cope with (GQA, Qwen3's own head_dim, biases, ties)."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.tiny import FAMILIES, build_tiny_model, tiny_text, tiny_tokenizer

GQA_FAMILIES = [name for name in FAMILIES if name != "gpt2"]
NORM_BIAS_FAMILIES = ["gpt2"]  # LayerNorm with a bias; the others use RMSNorm


def layers(state: dict[str, torch.Tensor]) -> int:
    return 1 + max(
        int(n.split(".")[2]) for n in state if n.startswith(("model.layers.", "transformer.h."))
    )


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


def test_seed_decides_the_weights_and_the_model_is_tiny(family, tmp_path):
    first = build_tiny_model(family, tmp_path / "a", seed=3)
    same, other = weights(first), weights(build_tiny_model(family, tmp_path / "b", seed=3))
    assert same.keys() == other.keys()
    assert all(torch.equal(same[name], other[name]) for name in same)
    different = weights(build_tiny_model(family, tmp_path / "c", seed=4))
    assert not any(torch.equal(same[name], different[name]) for name in same)
    # what keeps every build (and every test that runs one) quick: a few hundred thousand
    # parameters, never a real model's millions
    assert sum(t.numel() for t in same.values()) < 500_000


def test_weights_are_perturbed_so_blocks_differ(tiny_model_dir, family):
    state = weights(tiny_model_dir(family))
    scales = torch.cat([t for n, t in state.items() if is_norm(n) and n.endswith(".weight")])
    assert 0.8 < scales.mean() < 1.2 and scales.std() > 0.1
    shifts = [t for n, t in state.items() if is_norm(n) and n.endswith(".bias")]
    if family in NORM_BIAS_FAMILIES:  # LayerNorm: perturbed shifts that stay near zero
        assert len(shifts) == 2 * layers(state) + 1  # ln_1, ln_2 per layer, ln_f
        assert all(0 < t.abs().mean() < 0.2 for t in shifts)
    else:  # RMSNorm has a scale and no shift
        assert shifts == []
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


#: Per family, every bias its checkpoint holds (per-layer names without the layer prefix).
BIASES = {
    "llama": set(),
    "mistral": set(),
    "qwen2": {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"},
    "qwen3": set(),
    "phi3": set(),
    "gpt2": {
        "ln_1.bias", "attn.c_attn.bias", "attn.c_proj.bias", "ln_2.bias", "mlp.c_fc.bias",
        "mlp.c_proj.bias", "transformer.ln_f.bias",
    },
}  # fmt: skip


def test_each_family_has_exactly_its_own_biases(tiny_model_dir, family):
    """The adapters slice biases with their weights: each family must bring the ones its real
    checkpoints have (Qwen2's q/k/v, every GPT-2 linear and LayerNorm) and no others, in every
    layer."""
    state = weights(tiny_model_dir(family))
    biases = [re.sub(r"^(model\.layers|transformer\.h)\.\d+\.", "", n) for n in state]
    biases = [n for n in biases if n.endswith(".bias")]
    assert set(biases) == BIASES[family]
    for name in BIASES[family] - {"transformer.ln_f.bias"}:
        assert biases.count(name) == layers(state), name


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
