"""Benchmark models built from configs (nothing can be downloaded)."""

from __future__ import annotations

from pathlib import Path

from mptui.engine.tiny import build_tiny_model


def build_llama12(path: str) -> Path:
    """A 12-layer Llama-shaped model with a 32k vocabulary (GQA, random seeded weights).

    The 32k-wide head makes the LM head a real share of each evaluation, as in Llama-2; the
    tokenizer is the tiny one trained here (its ids are a subset of the vocabulary).
    """
    return build_tiny_model(
        "llama", path, num_layers=12, vocab_size=32000, hidden_size=512, intermediate_size=1376,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
    )  # fmt: skip
