"""How many calibration rows run per forward when the user does not say (docs/method.md §4).

The batch size comes from the device's *total* memory less the model's weights, never from the
memory free at the moment: the same model on the same machine is always batched the same way,
whether the prefix cache is on or off and whatever else runs beside it, so the scores (and the
plan) do not depend on a moment's memory. Out-of-memory still halves it (scoring.py).
"""

from __future__ import annotations

import math

import psutil
import torch
from torch import nn

from .adapters import Adapter

#: Share of (device memory - weights) that one batch's activations may use; the prefix cache
#: takes up to half of the free memory, the rest is headroom for the allocator.
ACTIVATION_SHARE = 0.25


def activation_bytes_per_row(adapter: Adapter, seqlen: int, element_bytes: int) -> int:
    """Peak bytes one row needs while one sub-block runs: the MLP's gate, up, activation and
    product (4 x width), and attention's normed input, q, k, v, output and residual sum plus the
    boundaries in and out (8 x hidden). The LM head's logits are sliced to a fixed size
    whatever the batch (scoring.LOSS_CHUNK_ELEMENTS), so they do not grow with it."""
    hidden = adapter.config.hidden_size
    return seqlen * (4 * adapter.dense_mlp_width + 8 * hidden) * element_bytes


def device_memory(device: torch.device) -> int:
    """Total bytes of ``device`` (a GPU's memory, or the machine's RAM for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return psutil.virtual_memory().total


def weight_bytes(model: nn.Module, device: torch.device) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.device == device)


def auto_batch_size(
    model: nn.Module, adapter: Adapter, rows: int, seqlen: int, memory: int | None = None
) -> int:
    """The fewest batches whose activations fit, with the rows split evenly among them
    (35 rows that fit 32 at a time run as 18 + 17, not 32 + 3). ``memory``: the device's total
    bytes (default: measured)."""
    embeddings = model.get_input_embeddings().weight
    device = embeddings.device
    memory = device_memory(device) if memory is None else memory
    budget = (memory - weight_bytes(model, device)) * ACTIVATION_SHARE
    per_row = activation_bytes_per_row(adapter, seqlen, embeddings.element_size())
    most = max(1, int(budget // per_row))
    batches = math.ceil(rows / most)
    return math.ceil(rows / batches)
