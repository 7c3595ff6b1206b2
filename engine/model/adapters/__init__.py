"""Architecture adapters and the registry that picks one for a model."""

from __future__ import annotations

from torch import nn

from ...errors import UnsupportedModel
from ..facts import SUPPORTED_MODEL_TYPES, family_model_types
from .base import Adapter, CommitRecord, ParamSpec
from .gpt2 import GPT2Adapter
from .llama import LlamaLikeAdapter
from .phi3 import Phi3Adapter

ADAPTERS: tuple[type[Adapter], ...] = (LlamaLikeAdapter, Phi3Adapter, GPT2Adapter)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter for ``model``'s family, or one clear error naming the supported ones."""
    model_types = family_model_types(model.config)
    model_type = model_types[0] if model_types else None
    for adapter in ADAPTERS:
        if any(name in adapter.model_types for name in model_types):
            return adapter(model)
    raise UnsupportedModel(
        f"architecture '{model_type}' ({type(model).__name__}) is not supported; "
        f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


__all__ = [
    "ADAPTERS",
    "Adapter",
    "CommitRecord",
    "ParamSpec",
    "adapter_for",
]
