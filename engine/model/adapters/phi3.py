"""Phi-3: fused ``qkv_proj`` and ``gate_up_proj``.

Its attention reads the head counts from its config at every forward, so a pruned attention
gets a config of its own with the counts it really has.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..facts import PHI3_TYPES
from .base import Adapter, ParamSpec


class Phi3Adapter(Adapter):
    model_types = PHI3_TYPES
    mlp_specs = (
        ParamSpec("gate_up_proj", "weight", 0, ("w", "w"), scored=True),
        ParamSpec("down_proj", "weight", 1, ("w",)),
    )
    attn_specs = (
        ParamSpec("qkv_proj", "weight", 0, ("q", "kv", "kv"), scored=True),
        ParamSpec("o_proj", "weight", 1, ("q",)),
    )

    def mlp_attributes(self, module: nn.Module, width: int) -> dict[str, Any]:
        return {"config.intermediate_size": width}

    def attn_attributes(self, module: nn.Module, groups: int) -> dict[str, Any]:
        heads = groups * self.q_per_kv
        return {
            "num_key_value_heads": groups,
            "config.num_attention_heads": heads,
            "config.num_key_value_heads": groups,
        }
