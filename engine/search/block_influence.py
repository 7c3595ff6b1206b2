"""ShortGPT's Block Influence of every layer, measured once on the dense model
(docs/method.md §11).

``BI_i = 1 - mean over tokens of cos(x_i, y_i)``, with ``x_i`` the hidden state entering layer
``i`` and ``y_i`` the one leaving it. A layer that barely turns its input scores near 0 and is
the first to go. The states are taken by hooks on the decoder layers themselves, so the last
layer's output is its own, not the model's final-norm output that ``output_hidden_states``
reports in its place.
"""

from __future__ import annotations

import torch
from torch import nn


def block_influence(
    model: nn.Module,
    layers: nn.ModuleList,
    chunks: torch.Tensor,
    batch_size: int,
) -> list[float]:
    """BI of each layer over every token of ``chunks`` (``[rows, seqlen]`` token ids).

    Only the base model runs: the LM head's logits, the largest activation of a forward, are
    never needed here, so the scorer's batch size is safe to reuse."""
    totals = torch.zeros(len(layers), dtype=torch.float64)
    inputs: dict[int, torch.Tensor] = {}

    def remember_input(index: int):
        def hook(_module, args, kwargs):
            inputs[index] = args[0] if args else kwargs["hidden_states"]

        return hook

    def add_similarity(index: int):
        def hook(_module, _args, output):
            leaving = output[0] if isinstance(output, tuple) else output
            cosine = nn.functional.cosine_similarity(
                inputs.pop(index).float(), leaving.float(), dim=-1
            )
            totals[index] += cosine.double().sum().cpu()

        return hook

    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(remember_input(index), with_kwargs=True))
        handles.append(layer.register_forward_hook(add_similarity(index)))
    device = model.get_input_embeddings().weight.device
    try:
        with torch.inference_mode():
            for start in range(0, len(chunks), batch_size):
                ids = chunks[start : start + batch_size].to(device)
                model.base_model(input_ids=ids, use_cache=False)  # no LM head: no logits
    finally:
        for handle in handles:
            handle.remove()
    return (1.0 - totals / chunks.numel()).tolist()


def influence_order(influence: list[float]) -> list[int]:
    """Layers from the lowest BI to the highest; equal BIs keep layer order (a stable sort)."""
    return sorted(range(len(influence)), key=influence.__getitem__)
