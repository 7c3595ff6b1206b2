"""What every architecture adapter knows, and the surgery that follows from it.

An adapter describes a family declaratively: the names of the two residual sub-blocks of a
decoder layer, and for each width dimension the parameters that carry its channels
(:class:`ParamSpec`). From that description this module derives the L1 reorder
(docs/method.md §3), the trial narrowing used while scoring a candidate, the committed slicing,
undo, and the exact parameter count a structure frees. A family adapter only adds what really
differs (attributes its forward reads, how a fused projection is laid out).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import UnsupportedModel
from ...search.structures import Structure
from ..facts import ModelFacts
from ..pruned_modeling import is_removed, set_attributes
from ..surgery import (
    RemovedAttention,
    RemovedMLP,
    join_segments,
    narrow_segments,
    permute_segments,
    replace_parameter,
    restore_parameter,
    segment_tails,
)


@dataclass(frozen=True)
class ParamSpec:
    """One parameter that carries channels of a width dimension.

    ``path`` is relative to the sub-block module (``gate_proj``), ``dim`` the axis that holds
    channels, and ``segments`` the kinds of the consecutive runs along it: ``"w"`` for MLP
    channels, ``"q"`` for query channels, ``"kv"`` for key/value channels. ``scored`` marks the
    weights whose L1 norms rank channels.
    """

    path: str
    name: str
    dim: int
    segments: tuple[str, ...]
    scored: bool = False


@dataclass
class CommitRecord:
    """What undo needs to put a committed structure back exactly."""

    structure: Structure
    removed_modules: dict[str, nn.Module] = field(default_factory=dict)
    tails: dict[tuple[str, str], list[torch.Tensor]] = field(default_factory=dict)
    old_attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: torch.device | None = None


class Adapter:
    """Base adapter for pre-norm decoder layers ``h += attn(norm(h)); h += mlp(norm(h))``."""

    model_types: ClassVar[tuple[str, ...]] = ()
    attn_norm: ClassVar[str] = "input_layernorm"
    attn: ClassVar[str] = "self_attn"
    mlp_norm: ClassVar[str] = "post_attention_layernorm"
    mlp: ClassVar[str] = "mlp"
    mlp_specs: ClassVar[tuple[ParamSpec, ...]] = ()
    attn_specs: ClassVar[tuple[ParamSpec, ...]] = ()

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config
        # Sized by the rules the checks before loading apply to config.json (model_facts).
        widths = ModelFacts.from_config(self.config).widths()
        if widths is None:
            raise UnsupportedModel(
                f"the config of {type(model).__name__} does not give its head and MLP widths"
            )
        self.widths = widths
        self.head_dim = widths.head_dim
        self.q_per_kv = widths.q_per_kv
        self.dense_kv_groups = widths.kv_groups
        self.dense_mlp_width = widths.mlp
        self.layers = self.decoder_layers()
        self._check_layout()

    # --- family specifics -------------------------------------------------------------------
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def final_norm(self) -> nn.Module:
        return self.model.model.norm

    def lm_head(self) -> nn.Module:
        return self.model.lm_head

    def mlp_attributes(self, module: nn.Module, width: int) -> dict[str, Any]:
        """Attributes of the MLP module that must follow its width (family-specific)."""
        return {"intermediate_size": width} if hasattr(module, "intermediate_size") else {}

    def attn_attributes(self, module: nn.Module, groups: int) -> dict[str, Any]:
        """Attributes of the attention module that must follow its number of KV groups."""
        values: dict[str, Any] = {}
        if hasattr(module, "num_key_value_heads"):
            values["num_key_value_heads"] = groups
        if hasattr(module, "num_heads"):
            values["num_heads"] = groups * self.q_per_kv
        return values

    # --- geometry ---------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def attn_group_channels(self) -> int:
        """Query channels in one KV group: the smallest legal attention step."""
        return self.widths.attn_group_channels

    def sub_module(self, layer: int, name: str) -> nn.Module:
        return getattr(self.layers[layer], name)

    def has_block(self, layer: int, kind: str) -> bool:
        name = self.attn if kind == "attn" else self.mlp
        return not is_removed(self.sub_module(layer, name))

    def mlp_width(self, layer: int) -> int:
        if not self.has_block(layer, "mlp"):
            return 0
        spec = self.mlp_specs[0]
        tensor = self._param(self.sub_module(layer, self.mlp), spec)
        return tensor.shape[spec.dim] // len(spec.segments)

    def attn_groups(self, layer: int) -> int:
        if not self.has_block(layer, "attn"):
            return 0
        spec = next(s for s in self.attn_specs if "kv" in s.segments)
        tensor = self._param(self.sub_module(layer, self.attn), spec)
        kv_segments = spec.segments.count("kv")
        q_channels = spec.segments.count("q") * self.attn_group_channels
        per_group = kv_segments * self.head_dim + q_channels
        return tensor.shape[spec.dim] // per_group

    def _segment_lengths(self, spec: ParamSpec, units: int, per_unit: dict[str, int]) -> list[int]:
        return [units * per_unit[kind] for kind in spec.segments]

    def _units(self, kind: str) -> dict[str, int]:
        if kind == "mlp_channels":
            return {"w": 1}
        return {"q": self.attn_group_channels, "kv": self.head_dim}

    @staticmethod
    def _param(module: nn.Module, spec: ParamSpec) -> torch.Tensor | None:
        return getattr(module.get_submodule(spec.path), spec.name)

    def _check_layout(self) -> None:
        """Fail loudly, at load, when the model is not shaped as this adapter expects."""
        for index, layer in enumerate(self.layers):
            for name in (self.attn_norm, self.attn, self.mlp_norm, self.mlp):
                if not hasattr(layer, name):
                    raise UnsupportedModel(
                        f"layer {index} of this {type(self.model).__name__} has no '{name}'; "
                        f"the {type(self).__name__} does not fit it"
                    )
            self._check_specs(layer, index)

    def _check_specs(self, layer: nn.Module, index: int) -> None:
        """Every channel-carrying parameter must agree with the layer's width and head_dim."""
        widths = {"mlp_channels": self.mlp_width(index), "attn_heads": self.attn_groups(index)}
        for kind, module_name, specs in (
            ("mlp_channels", self.mlp, self.mlp_specs),
            ("attn_heads", self.attn, self.attn_specs),
        ):
            module = getattr(layer, module_name)
            if is_removed(module):
                continue
            for spec in specs:
                tensor = self._param(module, spec)
                if tensor is None:
                    continue
                expected = sum(self._segment_lengths(spec, widths[kind], self._units(kind)))
                if tensor.shape[spec.dim] != expected or widths[kind] == 0:
                    raise UnsupportedModel(
                        f"layer {index}: {module_name}.{spec.path}.{spec.name} has "
                        f"{tensor.shape[spec.dim]} channels where {expected} were expected"
                    )

    # --- L1 reorder (docs/method.md §3) -----------------------------------------------------
    def channel_order(self, layer: int) -> dict[str, torch.Tensor]:
        """The L1 order of one layer, most important first: ``mlp`` (channels) and ``attn``
        (KV groups), for the sub-blocks it has. Scores in float32 and a stable sort, so ties
        keep their order."""
        order = {}
        if self.has_block(layer, "mlp"):
            order["mlp"] = self._stable_descending(self.mlp_channel_scores(layer))
        if self.has_block(layer, "attn"):
            order["attn"] = self._stable_descending(self.attn_group_scores(layer))
        return order

    def reorder_layer(
        self, layer: int, order: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Permute MLP channels and KV groups of one dense layer by ``order`` (by default its
        :meth:`channel_order`) and return the order used. The model's outputs do not change (a
        test checks it on every family)."""
        order = order if order is not None else self.channel_order(layer)
        sizes = {"mlp": self.mlp_width(layer), "attn": self.attn_groups(layer)}
        for name, size in sizes.items():
            given = order.get(name)
            if size and (given is None or sorted(given.tolist()) != list(range(size))):
                raise UnsupportedModel(
                    f"layer {layer}: the stored {name} order is not a permutation of {size}"
                )
        if sizes["mlp"]:
            self._permute(layer, "mlp_channels", sizes["mlp"], {"w": order["mlp"]})
        if sizes["attn"]:
            q_order = self._expand(order["attn"], self.attn_group_channels)
            kv_order = self._expand(order["attn"], self.head_dim)
            self._permute(layer, "attn_heads", sizes["attn"], {"q": q_order, "kv": kv_order})
        return order

    @staticmethod
    def _stable_descending(scores: torch.Tensor) -> torch.Tensor:
        return torch.sort(scores, descending=True, stable=True).indices

    @staticmethod
    def _expand(order: torch.Tensor, size: int) -> torch.Tensor:
        return (order[:, None] * size + torch.arange(size, device=order.device)[None, :]).reshape(
            -1
        )

    def _row_l1(self, module: nn.Module, spec: ParamSpec, lengths: list[int]) -> list[torch.Tensor]:
        tensor = self._param(module, spec).detach().float()
        other = 1 - spec.dim
        per_channel = tensor.abs().sum(dim=other)
        return list(torch.split(per_channel, lengths))

    def mlp_channel_scores(self, layer: int) -> torch.Tensor:
        """L1 of the gate row plus L1 of the up row of each channel (up alone without a gate)."""
        module = self.sub_module(layer, self.mlp)
        width = self.mlp_width(layer)
        total = None
        for spec in self.mlp_specs:
            if not spec.scored:
                continue
            for part in self._row_l1(module, spec, [width] * len(spec.segments)):
                total = part if total is None else total + part
        return total

    def attn_group_scores(self, layer: int) -> torch.Tensor:
        """Mean over each KV group of L1(q row) + L1(k row) + L1(v row) for its query rows."""
        module = self.sub_module(layer, self.attn)
        groups = self.attn_groups(layer)
        lengths_of = self._units("attn_heads")
        total = torch.zeros(groups * self.attn_group_channels, device=self._device(module))
        for spec in self.attn_specs:
            if not spec.scored:
                continue
            lengths = self._segment_lengths(spec, groups, lengths_of)
            for kind, part in zip(spec.segments, self._row_l1(module, spec, lengths), strict=True):
                if kind == "kv":
                    part = (
                        part.view(groups, 1, self.head_dim)
                        .expand(groups, self.q_per_kv, self.head_dim)
                        .reshape(-1)
                    )
                total = total + part.to(total.device)
        return total.view(groups, self.attn_group_channels).mean(dim=1)

    @staticmethod
    def _device(module: nn.Module) -> torch.device:
        return next(module.parameters()).device

    def _permute(self, layer: int, kind: str, units: int, orders: dict[str, torch.Tensor]) -> None:
        module = self.sub_module(layer, self.mlp if kind == "mlp_channels" else self.attn)
        for spec in self.mlp_specs if kind == "mlp_channels" else self.attn_specs:
            owner = module.get_submodule(spec.path)
            tensor = getattr(owner, spec.name)
            if tensor is None:
                continue
            dim = spec.dim
            lengths = self._segment_lengths(spec, units, self._units(kind))
            permuted = permute_segments(
                tensor.data, dim, lengths, [orders[k] for k in spec.segments]
            )
            tensor.data.copy_(permuted)

    # --- narrowing: trial and commit ------------------------------------------------------------
    def _width_edits(self, structure: Structure):
        """Yield (owner module, param name, dim, lengths, keep) for a width structure."""
        if structure.kind == "mlp_channels":
            module = self.sub_module(structure.layer, self.mlp)
            units_now = self.mlp_width(structure.layer)
            units_after = structure.width_after
            specs = self.mlp_specs
        else:
            module = self.sub_module(structure.layer, self.attn)
            units_now = self.attn_groups(structure.layer)
            units_after = structure.width_after // self.attn_group_channels
            specs = self.attn_specs
        per_unit = self._units(structure.kind)
        for spec in specs:
            owner = module.get_submodule(spec.path)
            tensor = getattr(owner, spec.name)
            if tensor is None:
                continue
            dim = spec.dim
            lengths = self._segment_lengths(spec, units_now, per_unit)
            keep = self._segment_lengths(spec, units_after, per_unit)
            yield owner, spec, dim, lengths, keep

    def _width_attributes(self, structure: Structure) -> tuple[nn.Module, dict[str, Any]]:
        if structure.kind == "mlp_channels":
            module = self.sub_module(structure.layer, self.mlp)
            return module, self.mlp_attributes(module, structure.width_after)
        module = self.sub_module(structure.layer, self.attn)
        groups = structure.width_after // self.attn_group_channels
        return module, self.attn_attributes(module, groups)

    @contextlib.contextmanager
    def trial(self, structure: Structure) -> Iterator[None]:
        """Apply ``structure`` temporarily, without copying weights where a view will do."""
        if structure.is_block:
            record = self._remove_block(structure, offload=False)
            try:
                yield
            finally:
                self._restore_block(record)
            return
        saved = []
        for owner, spec, dim, lengths, keep in self._width_edits(structure):
            tensor = getattr(owner, spec.name)
            narrowed = narrow_segments(tensor.data, dim, lengths, keep)
            saved.append((owner, spec.name, replace_parameter(owner, spec.name, narrowed)))
        module, values = self._width_attributes(structure)
        old_values = set_attributes(module, values)
        try:
            yield
        finally:
            set_attributes(module, old_values)
            for owner, name, old in reversed(saved):
                restore_parameter(owner, name, old)

    def commit(self, structure: Structure) -> CommitRecord:
        """Apply ``structure`` for good: slice weights once, free what was removed."""
        if structure.is_block:
            return self._remove_block(structure, offload=True)
        record = CommitRecord(structure)
        for owner, spec, dim, lengths, keep in self._width_edits(structure):
            tensor = getattr(owner, spec.name).data
            record.device = tensor.device
            tails = [t.to("cpu", copy=True) for t in segment_tails(tensor, dim, lengths, keep)]
            record.tails[(spec.path, spec.name)] = tails
            kept = narrow_segments(tensor, dim, lengths, keep).contiguous().clone()
            replace_parameter(owner, spec.name, kept)
        module, values = self._width_attributes(structure)
        record.old_attributes["module"] = set_attributes(module, values)
        return record

    def undo(self, record: CommitRecord) -> None:
        """Put back exactly what :meth:`commit` removed."""
        structure = record.structure
        if structure.is_block:
            self._restore_block(record)
            return
        module, _ = self._width_attributes(structure)
        per_unit = self._units(structure.kind)
        specs = self.mlp_specs if structure.kind == "mlp_channels" else self.attn_specs
        units_after = (
            structure.width_after
            if structure.kind == "mlp_channels"
            else structure.width_after // self.attn_group_channels
        )
        for spec in specs:
            key = (spec.path, spec.name)
            if key not in record.tails:
                continue
            owner = module.get_submodule(spec.path)
            kept = getattr(owner, spec.name).data
            dim = spec.dim
            keep = self._segment_lengths(spec, units_after, per_unit)
            replace_parameter(owner, spec.name, join_segments(kept, record.tails[key], dim, keep))
        set_attributes(module, record.old_attributes["module"])

    def _block_names(self, structure: Structure) -> tuple[str, str]:
        if structure.kind == "attn_block":
            return self.attn_norm, self.attn
        return self.mlp_norm, self.mlp

    def _remove_block(self, structure: Structure, *, offload: bool) -> CommitRecord:
        layer = self.layers[structure.layer]
        norm_name, block_name = self._block_names(structure)
        record = CommitRecord(structure)
        block = getattr(layer, block_name)
        record.device = self._device(block)
        for name in (norm_name, block_name):
            module = getattr(layer, name)
            record.removed_modules[name] = module.to("cpu") if offload else module
        if structure.kind == "attn_block":
            replacement: nn.Module = RemovedAttention(getattr(block, "layer_idx", structure.layer))
        else:
            replacement = RemovedMLP()
        setattr(layer, norm_name, nn.Identity())
        setattr(layer, block_name, replacement)
        return record

    def _restore_block(self, record: CommitRecord) -> None:
        layer = self.layers[record.structure.layer]
        for name, module in record.removed_modules.items():
            setattr(layer, name, module.to(record.device))

    # --- exact parameter accounting -----------------------------------------------------------
    def params_freed(self, structure: Structure, *, count_removed_norms: bool = False) -> int:
        """Parameters that committing ``structure`` removes, all counted (the ratio of
        docs/method.md §1).

        ``count_removed_norms`` reproduces MultiPruner's count, which keeps the norm weights of
        removed blocks (docs/method.md §9).
        """
        if structure.is_block:
            norm_name, block_name = self._block_names(structure)
            layer = self.layers[structure.layer]
            freed = _numel(getattr(layer, block_name))
            if not count_removed_norms:
                freed += _numel(getattr(layer, norm_name))
            return freed
        freed = 0
        for owner, spec, dim, lengths, keep in self._width_edits(structure):
            tensor = getattr(owner, spec.name)
            per_channel = tensor.numel() // tensor.shape[dim]
            freed += per_channel * (sum(lengths) - sum(keep))
        return freed


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
