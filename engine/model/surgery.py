"""Weight surgery: narrowing, permuting and restoring parameters; removed sub-blocks.

Width pruning keeps a *prefix* of each segment of a parameter along one dimension (the weights
are permuted once, at load, so that the prefix holds the most important channels). A segment is
one run of channels inside a fused projection: Phi-3's ``gate_up_proj`` rows are two segments
(gate, up), GPT-2's ``c_attn`` columns three (q, k, v). Everything here works on those segments,
so the adapters only describe where the segments are. The placeholders that stand in for removed
sub-blocks live in :mod:`.pruned_modeling`, which every export carries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .pruned_modeling import RemovedAttention, RemovedBlock, RemovedMLP, sync_shape_attributes


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


__all__ = [
    "RemovedAttention",
    "RemovedBlock",
    "RemovedMLP",
    "join_segments",
    "narrow_segments",
    "permute_segments",
    "replace_parameter",
    "restore_parameter",
    "segment_tails",
    "sync_shape_attributes",
]
