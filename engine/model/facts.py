"""What a run is checked against in a model's own files (config.json, tokenizer.json), read
without torch.

The same plain view (:class:`ModelFacts`) comes from a loaded transformers config or straight
from the model's ``config.json``, and the same functions check it: the CLI refuses an unsupported
architecture, a ``--seqlen`` above the model's limit, a group size that does not fit its widths
or calibration text shorter than one chunk in one line before torch is imported (transformers'
config classes import it), and the engine runs the same checks again on the loaded model.
Nothing here imports torch or transformers; huggingface_hub and tokenizers do not import torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadInput, UnsupportedModel, setting
from ..names import looks_like_path
from ..search.calibration import check_one_chunk
from ..search.settings import GroupSizes, resolve_group_sizes

if TYPE_CHECKING:
    from ..search.run_request import RunRequest

#: The model types each adapter prunes (engine/adapters take theirs from here), kept free of
#: torch so a config is checked before torch loads; errors list them in this order.
LLAMA_LIKE_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")
PHI3_TYPES: tuple[str, ...] = ("phi3",)
GPT2_TYPES: tuple[str, ...] = ("gpt2",)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = (*LLAMA_LIKE_TYPES, *PHI3_TYPES, *GPT2_TYPES)

#: GPT-2's names for what the other families call these (its config class maps them for
#: ``getattr``; its ``config.json`` holds only its own names).
_ALIASES = {
    "hidden_size": "n_embd",
    "num_attention_heads": "n_head",
    "max_position_embeddings": "n_positions",
}


def family_model_types(config: Any) -> list[str]:
    """The model types a loaded config is, most specific first (an export's config class is a
    subclass of its family's, so a legacy export's own type comes before its family's)."""
    return [c.model_type for c in type(config).__mro__ if getattr(c, "model_type", "")]


@dataclass(frozen=True)
class Widths:
    """The dense widths a group size is measured against, as the adapters prune them."""

    mlp: int
    head_dim: int
    q_per_kv: int
    kv_groups: int

    @property
    def attn_group_channels(self) -> int:
        """Query channels in one KV group: the smallest legal attention step."""
        return self.head_dim * self.q_per_kv

    @property
    def attn(self) -> int:
        """Query channels of a dense attention block."""
        return self.kv_groups * self.attn_group_channels


@dataclass(frozen=True)
class ModelFacts:
    """The values of a model's config the checks read; None where the config does not say
    (a check without its value is left to the loaded model's, which has its class's default)."""

    #: Most specific first; None when the config's own code decides (``auto_map``).
    model_types: tuple[str, ...] | None
    max_positions: int | None
    heads: int | None
    kv_heads: int | None
    head_dim: int | None
    mlp_width: int | None

    @classmethod
    def from_config(cls, config: Any) -> ModelFacts:
        """From a loaded transformers config (its class's defaults filled in)."""
        return cls._read(
            tuple(family_model_types(config)), lambda name: getattr(config, name, None)
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelFacts:
        """From a ``config.json`` as read from disk. A config that carries code (an mptui
        export: ``auto_map``) may be a subclass of a supported family's whatever its
        ``model_type`` says, so its types (and a config without one) are left to the load."""
        model_type = data.get("model_type")
        known = isinstance(model_type, str) and "auto_map" not in data
        return cls._read((model_type,) if known else None, data.get)

    @classmethod
    def _read(cls, model_types: tuple[str, ...] | None, value: Callable[[str], Any]) -> ModelFacts:
        """The one reading of both sources: the rules the adapters size a model by."""

        def number(name: str) -> int | None:
            found = value(name) or (value(_ALIASES[name]) if name in _ALIASES else None)
            return found if isinstance(found, int) and not isinstance(found, bool) else None

        heads = number("num_attention_heads")
        hidden = number("hidden_size")
        if model_types is not None and set(model_types) & set(GPT2_TYPES):
            # GPT-2 leaves n_inner unset for its usual MLP of four times the hidden size
            mlp_width = number("n_inner") or (4 * hidden if hidden else None)
        else:
            mlp_width = number("intermediate_size")
        return cls(
            model_types=model_types,
            max_positions=number("max_position_embeddings"),
            heads=heads,
            kv_heads=number("num_key_value_heads") or heads,
            head_dim=number("head_dim") or (hidden // heads if hidden and heads else None),
            mlp_width=mlp_width,
        )

    def widths(self) -> Widths | None:
        """The dense widths, or None when the config does not give them all; attention heads
        that do not split into the key/value heads are refused."""
        if None in (self.heads, self.kv_heads, self.head_dim, self.mlp_width):
            return None
        if self.heads % self.kv_heads:
            raise UnsupportedModel(
                f"{self.heads} attention heads do not split into {self.kv_heads} key/value heads"
            )
        return Widths(self.mlp_width, self.head_dim, self.heads // self.kv_heads, self.kv_heads)


def model_file(name_or_path: str, filename: str) -> Path | None:
    """``filename`` of a local model folder, or of a hub model when the local Hugging Face cache
    has it (the lookup the load starts with, without the network); None otherwise."""
    if looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser() / filename
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name_or_path, filename)
    except ValueError:  # not a hub id: the load says so
        return None
    return Path(cached) if isinstance(cached, str) else None


def read_model_facts(name_or_path: str) -> ModelFacts | None:
    """The facts of the model's ``config.json``; None when there is none at hand or it is not
    a JSON object (the load reports what is wrong with it)."""
    path = model_file(name_or_path, "config.json")
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return ModelFacts.from_json(data) if isinstance(data, dict) else None


def check_supported(facts: ModelFacts) -> None:
    """One clear error, naming the supported architectures, before any weight is read."""
    if facts.model_types is None:
        return
    if not set(facts.model_types) & set(SUPPORTED_MODEL_TYPES):
        model_type = facts.model_types[0] if facts.model_types else ""
        raise UnsupportedModel(
            f"architecture '{model_type}' is not supported; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def check_seqlen(seqlen: int, facts: ModelFacts) -> None:
    """Rows longer than the model's positions would fail deep inside its forward; say so first."""
    if facts.max_positions is not None and seqlen > facts.max_positions:
        raise BadInput(
            setting("seqlen"), f" {seqlen} is above this model's limit of {facts.max_positions}"
        )


def check_group_sizes(groups: GroupSizes, shares: Mapping[str, float], widths: Widths) -> None:
    """Group sizes that are whole KV groups and leave every pruned dimension a layer to step."""
    channels = widths.attn_group_channels
    if groups.attn % channels:
        raise BadInput(
            setting("attn_group"),
            f" {groups.attn} is not whole KV groups: it must be a multiple "
            f"of {channels} (head_dim {widths.head_dim} x {widths.q_per_kv} "
            "query heads per KV head)",
        )
    if shares.get("attn_heads", 0) > 0 and groups.attn >= widths.attn:
        raise BadInput(
            setting("attn_group"),
            f" {groups.attn} leaves no layer eligible: attention is "
            f"{widths.attn} query channels wide",
        )
    if shares.get("mlp_channels", 0) > 0 and groups.mlp >= widths.mlp:
        raise BadInput(
            setting("mlp_group"),
            f" {groups.mlp} leaves no layer eligible: the MLP is {widths.mlp} channels wide",
        )


def check_with_model_files(request: RunRequest, documents: Sequence[str] | None) -> None:
    """A new run's checks against its model, from the model's files alone: architecture,
    ``--seqlen``, group sizes, and (given the calibration ``documents``, and a
    ``tokenizer.json``) text for one chunk. What the files do not settle is checked once the
    model is loaded, by the same functions."""
    settings = request.settings
    spec = settings.calibration
    facts = read_model_facts(request.model)
    widths = None
    if facts is not None:
        check_supported(facts)
        check_seqlen(spec.seqlen, facts)
        widths = facts.widths()
    if documents is not None and settings.faithful is None:  # faithful mode draws its own rows
        tokenizer = model_file(request.model, "tokenizer.json")
        if tokenizer is not None:
            check_one_chunk(documents, spec, tokenizer)
    if widths is not None:
        groups = resolve_group_sizes(
            request.model,
            widths.mlp,
            widths.attn_group_channels,
            settings.mlp_group,
            settings.attn_group,
        )
        check_group_sizes(groups, settings.shares, widths)


__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "ModelFacts",
    "Widths",
    "check_group_sizes",
    "check_seqlen",
    "check_supported",
    "check_with_model_files",
    "family_model_types",
    "model_file",
    "read_model_facts",
]
