"""FLOP counts of the engine's work, from the model's shapes (multiply-add = 2 FLOPs).

Used to judge the prefix cache: it cannot beat the ratio of the FLOPs it skips, so the measured
naive/cached time ratio is compared against the FLOP ratio.
"""

from __future__ import annotations

from torch import nn

from mptui.engine.model.adapters import Adapter
from mptui.engine.model.surgery import RemovedBlock
from mptui.engine.search.structures import Structure


def _linear_params(module: nn.Module) -> int:
    return sum(p.numel() for name, p in module.named_parameters() if name.endswith("weight"))


def sub_block_flops(adapter: Adapter, index: int, batch: int, seqlen: int) -> float:
    """FLOPs of residual sub-block ``index`` on ``batch`` sequences of ``seqlen`` tokens."""
    layer_index, is_mlp = divmod(index, 2)
    layer = adapter.layers[layer_index]
    block = getattr(layer, adapter.mlp if is_mlp else adapter.attn)
    if isinstance(block, RemovedBlock):
        return 0.0
    tokens = batch * seqlen
    flops = 2.0 * tokens * _linear_params(block)
    if not is_mlp:
        # QK^T and AV under a causal mask: about half of 2 * 2 * S^2 * d_q per sequence
        q_channels = adapter.attn_groups(layer_index) * adapter.attn_group_channels
        flops += 2.0 * batch * seqlen * seqlen * q_channels
    return flops


def head_flops(adapter: Adapter, batch: int, seqlen: int) -> float:
    head = adapter.lm_head()
    return 2.0 * batch * (seqlen - 1) * head.weight.numel()


def evaluation_flops(adapter: Adapter, start: int, batch: int, seqlen: int) -> float:
    """One candidate evaluation that runs sub-blocks ``start..2L-1`` and the LM head."""
    blocks = sum(
        sub_block_flops(adapter, i, batch, seqlen) for i in range(start, 2 * adapter.num_layers)
    )
    return blocks + head_flops(adapter, batch, seqlen)


def candidate_flops(adapter: Adapter, candidate: Structure, start: int, batch: int, seqlen: int):
    """:func:`evaluation_flops` of the model with ``candidate`` tried (a width candidate runs
    its narrower projections)."""
    with adapter.trial(candidate):
        return evaluation_flops(adapter, start, batch, seqlen)


def scored_flops(adapter: Adapter, scorer, candidate: Structure, rows: int) -> float:
    """What the engine runs to score ``candidate`` on ``rows`` of ``scorer``'s rows: from its
    sub-block on with the prefix cache (from the stored boundary at or before it), from the
    embeddings without; the LM head always."""
    start = candidate.sub_block if scorer.prefix_cache else 0
    start -= start % scorer.cache_plan.stride
    return candidate_flops(adapter, candidate, start, rows, scorer.chunks.shape[1])
