"""Modeling code for a causal LM pruned by mptui (MultiPruner). Every export carries this file.

A pruned model is the stock model of its family with, in some decoder layers, residual
sub-blocks removed and projections narrowed. ``config.mptui_layout`` says which, as data:

- ``removed``: module path -> ``"attention"``, ``"mlp"`` or ``"norm"`` (what stands in for it);
- ``shapes``: parameter path -> its pruned shape;
- ``attributes``: module path -> attributes its forward reads (``config.NAME`` sets ``NAME``
  on a private copy of the module's config, for families whose forward reads the config).

The file imports only torch and transformers, so an export loads where mptui is not installed.
mptui's engine uses the same placeholders and the same attribute rule, so what it scored is what
an export computes. The exporter rewrites the one line marked ``mptui: family`` to name the
export's family; as shipped it names Llama.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig as FamilyConfig  # mptui: family
from transformers import LlamaForCausalLM as FamilyForCausalLM  # mptui: family


class RemovedBlock(nn.Module):
    """Base class of a removed residual sub-block: it has no parameters.

    Recognised by the ``mptui_removed`` marker rather than by class, because an export's copy of
    this file is a different module (transformers imports it from the export's folder).
    """

    mptui_removed = True


def is_removed(module: nn.Module) -> bool:
    """Whether ``module`` stands in for a removed sub-block (from this file or an export's)."""
    return getattr(module, "mptui_removed", False)


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


def set_attributes(module: nn.Module, values: dict[str, Any]) -> dict[str, Any]:
    """Set attributes of ``module`` and return the values that undo it.

    ``config.NAME`` sets ``NAME`` on a shallow copy of the module's config, made once, so the
    model's shared config (and every other layer) keeps the dense sizes.
    """
    old: dict[str, Any] = {}
    in_config = {k.removeprefix("config."): v for k, v in values.items() if k.startswith("config.")}
    if in_config:
        old["config"] = module.config
        module.config = copy.copy(module.config)
        for name, value in in_config.items():
            setattr(module.config, name, value)
    for name, value in values.items():
        if not name.startswith("config."):
            old[name] = getattr(module, name)
            setattr(module, name, value)
    return old


def _replace_child(model: nn.Module, path: str, role: str) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    old = getattr(parent, name)
    if role == "attention":
        replacement: nn.Module = RemovedAttention(getattr(old, "layer_idx", None))
    elif role == "mlp":
        replacement = RemovedMLP()
    elif role == "norm":
        replacement = nn.Identity()
    else:
        raise ValueError(f"mptui_layout: unknown role '{role}' for '{path}'")
    setattr(parent, name, replacement)


def _reshape_parameter(model: nn.Module, path: str, shape: list[int]) -> None:
    owner_path, _, name = path.rpartition(".")
    owner = model.get_submodule(owner_path)
    old = getattr(owner, name)
    if not isinstance(old, nn.Parameter):
        raise ValueError(f"mptui_layout: '{path}' is not a parameter of this model")
    empty = torch.empty(shape, dtype=old.dtype, device=old.device)
    setattr(owner, name, nn.Parameter(empty, requires_grad=old.requires_grad))
    sync_shape_attributes(owner)


def apply_layout(model: nn.Module, layout: dict) -> None:
    """Turn a freshly built dense model into the pruned shape (weights are loaded after)."""
    for path, role in layout.get("removed", {}).items():
        _replace_child(model, path, role)
    for path, shape in layout.get("shapes", {}).items():
        _reshape_parameter(model, path, shape)
    for path, values in layout.get("attributes", {}).items():
        set_attributes(model.get_submodule(path), values)


class IncompleteCheckpoint(ValueError):
    """The weights on disk do not match the pruned model exactly."""


def check_loading_info(info: dict) -> None:
    """Refuse a checkpoint with a missing, unexpected or misshapen weight.

    transformers would initialise a missing weight at random and carry on; a pruned export that
    lost a tensor must not quietly become a different model.
    """
    problems = []
    for name in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(key) for key in info.get(name) or ())
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            problems.append(f"{name.replace('_', ' ')}: {shown}")
    if problems:
        raise IncompleteCheckpoint(
            "this pruned checkpoint does not match its config (was a file changed?): "
            + "; ".join(problems)
        )


#: The weights' files carry this variant (``model.mptui.safetensors``): a stock class loading the
#: folder without this code finds no weights and fails, instead of building a dense model with
#: random weights where the pruned layers' weights are missing.
WEIGHTS_VARIANT = "mptui"


class MptuiPrunedConfig(FamilyConfig):
    """The family's config plus ``mptui_layout``. It keeps the family's model type, so what reads
    only the config and the tokenizer (``AutoTokenizer``, as lm-eval, pipelines and servers call
    it) needs no remote code and asks no question; the model needs its code (see
    :data:`WEIGHTS_VARIANT`)."""


class MptuiPrunedForCausalLM(FamilyForCausalLM):
    """The family's causal LM, pruned to ``config.mptui_layout``, loaded strictly."""

    config_class = MptuiPrunedConfig

    def __init__(self, config) -> None:
        super().__init__(config)
        apply_layout(self, config.mptui_layout)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        wants_info = kwargs.pop("output_loading_info", False)
        kwargs.setdefault("variant", WEIGHTS_VARIANT)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        check_loading_info(info)
        return (model, info) if wants_info else model
