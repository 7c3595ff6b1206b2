"""A session's pruned model, rebuilt: its dense model loaded again and its plan re-applied.

A session keeps no pruned weights, only what rebuilds them exactly: its plan and the L1 channel
order it was searched under. ``mptui eval --session``, ``mptui export`` and recovery of a
session all start here. This sits above the weight surgery and the adapters (it uses both), so
neither of them has to reach up for it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..search.plan import Plan, as_plan
from .adapters import adapter_for
from .channel_order import reorder_model
from .loading import load_model


def apply_plan(model: nn.Module, plan: Plan | dict, order_file: Path | None = None) -> None:
    """Prune a freshly loaded dense ``model`` to ``plan``: the session's L1 order (from
    ``order_file`` when it exists, else recomputed), then every committed structure in order."""
    adapter = adapter_for(model)
    reorder_model(adapter, order_file)
    for step in as_plan(plan).steps:
        adapter.commit(step.structure)


def rebuild_pruned(
    plan: Plan,
    order_file: Path | None,
    *,
    dtype: str | None = None,
    device: str | None = None,
    device_map: str | None = None,
    on_shard: Callable[[int, int], None] | None = None,
    before_pruning: Callable[[nn.Module, object], None] | None = None,
) -> tuple[nn.Module, object]:
    """``(model, tokenizer)``: the pruned model of a session's ``plan`` as its search left it.

    The dense model is loaded in the precision the session ran in unless ``dtype`` says
    otherwise: the channel order, and with it every kept channel, depends on it.
    ``before_pruning(model, tokenizer)`` sees the dense model first (``mptui eval`` scores it).
    """
    model, tokenizer = load_model(
        plan.model.name_or_path, dtype=dtype or plan.model.dtype, device=device,
        device_map=device_map, on_shard=on_shard,
    )  # fmt: skip
    if before_pruning is not None:
        before_pruning(model, tokenizer)
    apply_plan(model, plan, order_file)
    return model, tokenizer
