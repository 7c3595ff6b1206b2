"""Weight surgery: narrowing, permuting and restoring parameters; removed sub-blocks.

Width pruning keeps a *prefix* of each segment of a parameter along one dimension (the weights
are permuted once, at load, so that the prefix holds the most important channels). A segment is
one run of channels inside a fused projection: Phi-3's ``gate_up_proj`` rows are two segments
(gate, up), GPT-2's ``c_attn`` columns three (q, k, v). Everything here works on those segments,
so the adapters only describe where the segments are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def narrow_segments(
    tensor: torch.Tensor, dim: int, lengths: Sequence[int], keep: Sequence[int]
) -> torch.Tensor:
    """Keep the first ``keep[s]`` entries of each segment ``s`` (a view for a single segment)."""
    if len(lengths) == 1:
        return tensor.narrow(dim, 0, keep[0])
    parts, start = [], 0
    for length, kept in zip(lengths, keep, strict=True):
        parts.append(tensor.narrow(dim, start, kept))
        start += length
    return torch.cat(parts, dim=dim)


def segment_tails(
    tensor: torch.Tensor, dim: int, lengths: Sequence[int], keep: Sequence[int]
) -> list[torch.Tensor]:
    """The entries that :func:`narrow_segments` drops, one tensor per segment (for undo)."""
    tails, start = [], 0
    for length, kept in zip(lengths, keep, strict=True):
        tails.append(tensor.narrow(dim, start + kept, length - kept))
        start += length
    return tails


def join_segments(
    kept: torch.Tensor, tails: Sequence[torch.Tensor], dim: int, keep: Sequence[int]
) -> torch.Tensor:
    """Inverse of narrowing: put each segment's tail back behind its kept prefix."""
    parts, start = [], 0
    for kept_len, tail in zip(keep, tails, strict=True):
        parts.append(kept.narrow(dim, start, kept_len))
        parts.append(tail.to(device=kept.device, dtype=kept.dtype))
        start += kept_len
    return torch.cat(parts, dim=dim)


def permute_segments(
    tensor: torch.Tensor, dim: int, lengths: Sequence[int], orders: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Reorder the entries of each segment by its own index tensor."""
    parts, start = [], 0
    for length, order in zip(lengths, orders, strict=True):
        segment = tensor.narrow(dim, start, length)
        parts.append(segment.index_select(dim, order.to(tensor.device)))
        start += length
    return torch.cat(parts, dim=dim) if len(parts) > 1 else parts[0]


def replace_parameter(module: nn.Module, name: str, value: torch.Tensor) -> nn.Parameter:
    """Swap ``module.<name>`` for a frozen parameter holding ``value``; return the old one."""
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value, requires_grad=False))
    sync_shape_attributes(module)
    return old


def restore_parameter(module: nn.Module, name: str, old: nn.Parameter) -> None:
    setattr(module, name, old)
    sync_shape_attributes(module)


def sync_shape_attributes(module: nn.Module) -> None:
    """Keep the size attributes that forwards and ``repr`` read equal to the weight's shape.

    ``nn.Linear`` stores ``in/out_features``; transformers' ``Conv1D`` (GPT-2) reads ``nf`` in
    its forward, so a stale value would silently reshape to the old width.
    """
    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() != 2:
        return
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    elif hasattr(module, "nf") and hasattr(module, "nx"):
        module.nx, module.nf = weight.shape


class RemovedBlock(nn.Module):
    """Marker base class for a removed residual sub-block: it has no parameters."""


class RemovedAttention(RemovedBlock):
    """Stands in for a removed attention: adds nothing to the residual stream.

    During generation it still appends a one-channel placeholder to the KV cache for its layer,
    so that the cache's sequence length (which transformers reads from any layer, often layer 0)
    stays right; the placeholder costs one number per token.
    """

    def __init__(self, layer_idx: int | None) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and self.layer_idx is not None:
            batch, length = hidden_states.shape[0], hidden_states.shape[1]
            placeholder = hidden_states.new_zeros(batch, 1, length, 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class RemovedMLP(RemovedBlock):
    """Stands in for a removed MLP: adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)
