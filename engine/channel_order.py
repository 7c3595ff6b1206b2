"""The L1 channel order of a model, kept with its session.

Width pruning keeps a prefix of channels ranked by L1 norm (docs/method.md §3). Recomputing
the ranking later (to resume, export or evaluate a session) is only safe on the same device and
precision: float32 sums reduced in another order can swap two near-equal channels, and a swap
across a cut keeps a different channel than the search scored. So the order computed at the
start of a session is saved, and everything that re-applies the session's plan reads it back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from .adapters import Adapter
from .errors import BadInput, UnsupportedModel


def reorder_model(
    adapter: Adapter,
    stored: Path | None = None,
    *,
    save_to: Path | None = None,
    interrupt: Callable[[], None] | None = None,
) -> dict[int, dict[str, torch.Tensor]]:
    """Permute every layer by the order saved at ``stored`` when that file exists, else by its
    own L1 order (then saved at ``save_to`` when given), and return the order applied.
    ``interrupt`` runs between layers."""
    check = interrupt or (lambda: None)
    if stored is not None and stored.is_file():
        orders = read_order(stored)
        try:
            apply_order(adapter, orders, interrupt=check)
        except UnsupportedModel as error:
            raise BadInput(f"{stored} does not belong to this model: {error}") from None
        return orders
    orders = {}
    for layer in range(adapter.num_layers):
        check()
        orders[layer] = adapter.reorder_layer(layer)
    if save_to is not None:
        write_order(save_to, orders)
    return orders


def apply_order(
    adapter: Adapter,
    orders: dict[int, dict[str, torch.Tensor]],
    *,
    interrupt: Callable[[], None] | None = None,
) -> None:
    """Permute every layer by ``orders`` (a saved order, or the one a leader broadcast)."""
    for layer in range(adapter.num_layers):
        if interrupt is not None:
            interrupt()
        adapter.reorder_layer(layer, orders.get(layer, {}))


def write_order(path: Path, orders: dict[int, dict[str, torch.Tensor]]) -> None:
    from safetensors.torch import save_file

    tensors = {
        f"{layer}.{name}": order.to("cpu", torch.int64).contiguous()
        for layer, by_name in orders.items()
        for name, order in by_name.items()
    }
    temporary = path.with_name(f".{path.name}.partial")
    save_file(tensors, str(temporary))
    os.replace(temporary, path)


def read_order(path: Path) -> dict[int, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise BadInput(f"{path} is damaged ({error})") from None
    orders: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        layer, _, name = key.partition(".")
        orders.setdefault(int(layer), {})[name] = tensor
    return orders
