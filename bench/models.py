"""Benchmark models built from configs (nothing can be downloaded)."""

from __future__ import annotations

from pathlib import Path

from bench.tiny import build_tiny_model


def build_llama12(path: str) -> Path:
    """A 12-layer Llama-shaped model with a 32k vocabulary (GQA, random seeded weights), for
    timings only (``bench search``): its random blocks matter about equally, so it says nothing
    of the plans a search makes (bench/trained.py builds the trained model for that).

    The 32k-wide head makes the LM head a real share of each evaluation, as in Llama-2; the
    tokenizer is the tiny one trained here (its ids are a subset of the vocabulary).
    """
    return build_tiny_model(
        "llama", path, num_layers=12, vocab_size=32000, hidden_size=512, intermediate_size=1376,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
    )  # fmt: skip


#: Llama-2-7B's shape (random weights: nothing can be downloaded on the GPU machine).
LLAMA2_7B = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
}  # fmt: skip


def build_llama_in_memory(
    device: str, dtype: str = "bfloat16", shape: dict = LLAMA2_7B, seed: int = 0
):
    """A Llama of ``shape`` (Llama-2-7B's by default) built straight on ``device`` in ``dtype``
    (13.5 GB in bf16: writing it to disk first would cost more than the benchmark), and a
    tokenizer whose ids all fall inside the vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from bench.tiny import tiny_tokenizer
    from mptui.engine.model.loading import resolve_dtype

    torch.manual_seed(seed)
    config = LlamaConfig(**shape)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=resolve_dtype(dtype, device), attn_implementation="sdpa"
        )
    model.eval().requires_grad_(False)
    return model, tiny_tokenizer(min(shape["vocab_size"], 32000))


def spread_sub_blocks(model, seed: int = 0, octaves: float = 4.0) -> None:
    """Scale each sub-block's output projection by its own factor, a seeded shuffle of factors
    spread evenly over ``octaves`` powers of two. Random weights make every sub-block alike, so
    all candidates tie to within rounding and "the same choice" would mean nothing; spread
    apart, their removals cost clearly different perplexities, as in a trained model."""
    import torch

    layers = model.model.layers
    outputs = [layer.self_attn.o_proj for layer in layers]
    outputs += [layer.mlp.down_proj for layer in layers]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(outputs), generator=generator).tolist()
    for rank, projection in zip(order, outputs, strict=True):
        factor = 2 ** (octaves * (rank / max(1, len(outputs) - 1) - 0.5))
        projection.weight.data.mul_(factor)
