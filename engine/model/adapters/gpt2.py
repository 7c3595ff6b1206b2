"""GPT-2: ``Conv1D`` projections (weights stored input-major) and a fused ``c_attn``.

No gate in the MLP, so channels are ranked by the up projection alone (docs/method.md §3);
no grouped attention, so one KV group is one head. Its MLP width (``n_inner``, or four times
the hidden size when unset) is read with the other families' in :mod:`..model_facts`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..facts import GPT2_TYPES
from .base import Adapter, ParamSpec


class GPT2Adapter(Adapter):
    model_types = GPT2_TYPES
    attn_norm = "ln_1"
    attn = "attn"
    mlp_norm = "ln_2"
    mlp = "mlp"
    mlp_specs = (
        ParamSpec("c_fc", "weight", 1, ("w",), scored=True),
        ParamSpec("c_fc", "bias", 0, ("w",)),
        ParamSpec("c_proj", "weight", 0, ("w",)),
    )
    attn_specs = (
        ParamSpec("c_attn", "weight", 1, ("q", "kv", "kv"), scored=True),
        ParamSpec("c_attn", "bias", 0, ("q", "kv", "kv")),
        ParamSpec("c_proj", "weight", 0, ("q",)),
    )

    def decoder_layers(self) -> nn.ModuleList:
        return self.model.transformer.h

    def final_norm(self) -> nn.Module:
        return self.model.transformer.ln_f

    def mlp_attributes(self, module: nn.Module, width: int) -> dict[str, Any]:
        return {}

    def attn_attributes(self, module: nn.Module, groups: int) -> dict[str, Any]:
        # GPT2Attention splits c_attn's output at ``split_size`` and counts ``num_heads``.
        return {"split_size": groups * self.head_dim, "num_heads": groups}
