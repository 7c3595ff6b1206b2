"""The L1 channel order of a model, kept with its session.

Width pruning keeps a prefix of channels ranked by L1 norm (docs/method.md §3). Recomputing
the ranking later (to resume, export or evaluate a session) is only safe on the same device and
precision: float32 sums reduced in another order can swap two near-equal channels, and a swap
across a cut keeps a different channel than the search scored. So the order computed at the
start of a session is saved, and everything that re-applies the session's plan reads it back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import BadInput
from ..session.disk import write_bytes_atomic
from .adapters import Adapter


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
        check_order(adapter, orders, stored)
        apply_order(adapter, orders, interrupt=check)
        return orders
    orders = {}
    for layer in range(adapter.num_layers):
        check()
        orders[layer] = adapter.reorder_layer(layer)
    if save_to is not None:
        write_order(save_to, orders)
    return orders


def check_order(adapter: Adapter, orders: dict[int, dict[str, torch.Tensor]], path: Path) -> None:
    """One line naming the key of ``path`` that is not a permutation of the channels (MLP) or
    KV groups (attention) of ``adapter``'s model as it is now; works on a meta-device model."""
    for layer in range(adapter.num_layers):
        sizes = {"mlp": adapter.mlp_width(layer), "attn": adapter.attn_groups(layer)}
        for name, size in sizes.items():
            given = orders.get(layer, {}).get(name)
            if not size:
                continue
            if given is None:
                raise BadInput(f"{path} has no key '{layer}.{name}' (the model has {size})")
            if tuple(given.shape) != (size,) or sorted(given.tolist()) != list(range(size)):
                raise BadInput(
                    f"{path} key '{layer}.{name}' is not an order of this model's {size} "
                    f"{'channels' if name == 'mlp' else 'KV groups'} (shape {tuple(given.shape)})"
                )
    extra = sorted(set(orders) - set(range(adapter.num_layers)))
    if extra:
        raise BadInput(f"{path} has layer {extra[0]}; the model has {adapter.num_layers}")


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
    from safetensors.torch import save

    tensors = {
        f"{layer}.{name}": order.to("cpu", torch.int64).contiguous()
        for layer, by_name in orders.items()
        for name, order in by_name.items()
    }
    write_bytes_atomic(path, save(tensors))


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
