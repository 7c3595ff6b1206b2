"""Llama-like decoders: Llama, Mistral, Qwen2, Qwen3 (separate q/k/v/o and gate/up/down).

Qwen2 adds q/k/v biases and Qwen3 per-head q/k norms; both are covered by the same
description because the norms act on ``head_dim`` and never change size.
"""

from __future__ import annotations

from ..facts import LLAMA_LIKE_TYPES
from .base import Adapter, ParamSpec


class LlamaLikeAdapter(Adapter):
    model_types = LLAMA_LIKE_TYPES
    mlp_specs = (
        ParamSpec("gate_proj", "weight", 0, ("w",), scored=True),
        ParamSpec("gate_proj", "bias", 0, ("w",)),
        ParamSpec("up_proj", "weight", 0, ("w",), scored=True),
        ParamSpec("up_proj", "bias", 0, ("w",)),
        ParamSpec("down_proj", "weight", 1, ("w",)),
    )
    attn_specs = (
        ParamSpec("q_proj", "weight", 0, ("q",), scored=True),
        ParamSpec("q_proj", "bias", 0, ("q",)),
        ParamSpec("k_proj", "weight", 0, ("kv",), scored=True),
        ParamSpec("k_proj", "bias", 0, ("kv",)),
        ParamSpec("v_proj", "weight", 0, ("kv",), scored=True),
        ParamSpec("v_proj", "bias", 0, ("kv",)),
        ParamSpec("o_proj", "weight", 1, ("q",)),
    )
