"""Export a pruned model as one GGUF file that llama.cpp (and every tool built on it) runs as it
is, with no code of ours: the file is what serving the pruned model needs.

llama.cpp reads decoder layers of different shapes through its ``deci`` architecture (made for
NVIDIA's Nemotron NAS models): per-layer arrays of query heads, KV heads and FFN widths; a layer
with no heads skips attention, one with an FFN width of 0 skips its MLP. Every plan the engine
makes maps onto that, with two exceptions that llama.cpp's graph forces on us:

- a layer whose MLP was removed but whose attention was kept cannot say so: that graph skips
  the residual add of the attention too. It gets a one-channel MLP whose weights are zero,
  which adds exactly nothing;
- the first layer must have attention heads (llama.cpp reads the head size off layer 0). When
  the plan removed it, that layer gets one zero-weight KV group, which also adds exactly nothing.

Both stand-ins are counted in :class:`GgufResult`. Layers removed whole are dropped and the rest
renumbered. llama.cpp rotates query/key pairs that sit side by side, transformers pairs each
channel with the one half a head away, so q and k rows (and biases) are reordered per head.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import BadInput, UnsupportedModel, setting
from ..model.adapters import Adapter, adapter_for
from ..model.facts import family_model_types
from ..names import model_label
from ..search.plan import Plan, as_plan
from ..session.disk import staged_file
from .gguf_rules import (
    FORMAT_GGUF,
    GGUF_FAMILIES,
    GGUF_TYPES,
    check_gguf_destination,
    refusal_for,
)
from .gguf_vocab import gguf_vocab

Progress = Callable[[int, int], None]
#: Values per q8_0 block: a row quantizes only when its length is a multiple.
Q8_0_BLOCK = 32


@dataclass(frozen=True)
class GgufResult:
    path: Path
    params: int
    bytes: int
    seconds: float
    gguf_type: str
    stand_ins: int  # zero-weight attention groups and MLP channels llama.cpp needs (see above)


@dataclass(frozen=True)
class GgufLayer:
    """One decoder layer as llama.cpp's deci graph sees it."""

    source: int  # the model's layer index
    heads: int
    kv_heads: int
    ffn: int
    attention_stand_in: bool = False
    mlp_stand_in: bool = False


# --- what the file holds ----------------------------------------------------------------------
def gguf_layers(adapter: Adapter) -> list[GgufLayer]:
    """The layers the GGUF file holds, in order, with the stand-ins the graph needs."""
    layers = []
    for index in range(adapter.num_layers):
        groups, width = adapter.attn_groups(index), adapter.mlp_width(index)
        if groups == 0 and width == 0:
            continue  # removed whole: dropped, the rest renumbered
        attention_stand_in = groups == 0 and not layers
        mlp_stand_in = width == 0 and (groups > 0 or attention_stand_in)
        if attention_stand_in:
            groups = 1
        ffn = max(width, int(mlp_stand_in))
        heads = groups * adapter.q_per_kv
        layers.append(GgufLayer(index, heads, groups, ffn, attention_stand_in, mlp_stand_in))
    if not layers:
        raise BadInput(FORMAT_GGUF, ": the plan removed every layer; nothing is left to serve")
    return layers


# --- the export -------------------------------------------------------------------------------
def export_gguf(
    model: nn.Module,
    tokenizer: Any,
    plan: Plan | dict,
    out: Path,
    *,
    gguf_type: str | None = None,
    progress: Progress | None = None,
) -> GgufResult:
    """Write ``model`` (already pruned to ``plan``) to the GGUF file ``out``, whole or not at
    all. ``gguf_type`` is one of :data:`GGUF_TYPES`; None keeps the weights' own precision."""
    import gguf

    started = time.monotonic()
    plan = as_plan(plan)
    out = Path(out).expanduser()
    check_gguf_destination(out)
    adapter = _checked_adapter(model)
    rope = _rope(model.config)  # refuses a scaling llama.cpp's deci graph cannot reproduce
    gguf_type = gguf_type or _own_type(model, plan)
    if gguf_type not in GGUF_TYPES:
        raise BadInput(
            setting("gguf_type"), f" {gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}"
        )
    if tokenizer is None:
        raise BadInput(FORMAT_GGUF, " needs the model's tokenizer, and this model has none")
    layers = gguf_layers(adapter)
    vocab = gguf_vocab(tokenizer, model.config.vocab_size)
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.DECI])
    _write_metadata(writer, model, adapter, layers, plan, gguf_type, rope)
    vocab.write(writer)
    tensors = list(_tensors(model, adapter, layers, rope))
    written = 0

    def on_written(size: int) -> None:
        nonlocal written
        written += size
        if progress is not None:
            progress(written, total)

    stored = [(name, _stored(tensor, name, gguf_type, on_written)) for name, tensor in tensors]
    total = sum(deferred.nbytes for _, deferred in stored)
    for name, deferred in stored:
        deferred.add_to(writer, name)
    with staged_file(out, f"the GGUF file {out.name!r} (none of it was kept)") as staging:
        try:
            writer.write_header_to_file(path=staging)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    params = sum(tensor.numel() for _, tensor in tensors)
    stand_ins = sum(layer.attention_stand_in + layer.mlp_stand_in for layer in layers)
    return GgufResult(out, params, out.stat().st_size, time.monotonic() - started, gguf_type,
                      stand_ins)  # fmt: skip


def describe_gguf(result: GgufResult) -> str:
    """One line for a :class:`GgufResult`."""
    stand_ins = (
        f"; {result.stand_ins} zero-weight stand-in(s) for llama.cpp's layer rules"
        if result.stand_ins
        else ""
    )
    return (
        f"exported to {result.path}: GGUF ({result.gguf_type}), {result.params:,} parameters, "
        f"{result.bytes / 1e9:.2f} GB in {result.seconds:.1f}s{stand_ins}; "
        f"run it with llama-cli -m {result.path}"
    )


def _checked_adapter(model: nn.Module) -> Adapter:
    config = model.config
    types = family_model_types(config)
    family = next((name for name in types if name in GGUF_FAMILIES), types[0])
    if why := refusal_for(family):
        raise UnsupportedModel(why)
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UnsupportedModel(FORMAT_GGUF, f": the activation {config.hidden_act!r} is not silu")
    if getattr(config, "partial_rotary_factor", 1.0) not in (None, 1.0):
        raise UnsupportedModel(FORMAT_GGUF, ": partial rotary embeddings are not supported")
    if getattr(model.lm_head, "bias", None) is not None:
        raise UnsupportedModel(FORMAT_GGUF, ": an LM head with a bias is not supported")
    return adapter_for(model)


def _own_type(model: nn.Module, plan: Plan) -> str:
    from .export import storage_dtype

    dtype = storage_dtype(model, plan.model.name_or_path)
    return {torch.float16: "f16", torch.bfloat16: "bf16"}.get(dtype, "f32")


# --- metadata ---------------------------------------------------------------------------------
def _rope(config) -> dict:
    """The RoPE parameters as a plain dict (transformers 5 keeps them in ``rope_parameters``)."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    kind = rope.get("rope_type", "default")
    if kind not in ("default", "linear", "llama3"):
        raise UnsupportedModel(
            FORMAT_GGUF,
            f": RoPE scaling {kind!r} is not supported (default, linear and llama3 are)",
        )
    return rope


def _context_length(config) -> int:
    """The context llama.cpp computes exactly: deci layers attend to everything, so a model
    trained with a sliding window is exact up to that window."""
    length = config.max_position_embeddings
    window = getattr(config, "sliding_window", None)
    uses_window = getattr(config, "use_sliding_window", True)
    return min(length, window) if window and uses_window else length


def _write_metadata(writer, model, adapter, layers, plan: Plan, gguf_type: str, rope: dict) -> None:
    import gguf

    config = model.config
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(f"{model_label(plan.model.name_or_path, config)} (pruned by mptui)")
    writer.add_file_type(file_types[gguf_type])
    if gguf_type == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(_context_length(config))
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(len(layers))
    writer.add_feed_forward_length([layer.ffn for layer in layers])
    writer.add_head_count([layer.heads for layer in layers])
    writer.add_head_count_kv([layer.kv_heads for layer in layers])
    writer.add_key_length(adapter.head_dim)
    writer.add_value_length(adapter.head_dim)
    writer.add_rope_dimension_count(adapter.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_vocab_size(config.vocab_size)
    writer.add_string("mptui.plan", json.dumps(plan.to_dict()))


# --- tensors ----------------------------------------------------------------------------------
def _tensors(
    model: nn.Module, adapter: Adapter, layers: list[GgufLayer], rope: dict
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(gguf name, tensor)`` in the order llama.cpp's converter writes them."""
    embeddings = model.get_input_embeddings().weight
    yield "token_embd.weight", embeddings
    if rope.get("rope_type") == "llama3":
        yield "rope_freqs.weight", _llama3_rope_factors(rope, adapter.head_dim)
    for number, layer in enumerate(layers):
        decoder = adapter.layers[layer.source]
        yield from _attention_tensors(number, layer, decoder, adapter)
        yield from _mlp_tensors(number, layer, decoder, adapter)
    yield "output_norm.weight", adapter.final_norm().weight
    head = adapter.lm_head().weight
    if head.data_ptr() != embeddings.data_ptr():
        yield "output.weight", head  # a tied head is left out: llama.cpp ties it back


def _attention_tensors(number: int, layer: GgufLayer, decoder, adapter: Adapter):
    if layer.heads == 0:
        return
    hidden = adapter.config.hidden_size
    if layer.attention_stand_in:
        q_rows, kv_rows = layer.heads * adapter.head_dim, adapter.head_dim
        parts = {
            "attn_norm": torch.ones(hidden),
            "attn_q": torch.zeros(q_rows, hidden),
            "attn_k": torch.zeros(kv_rows, hidden),
            "attn_v": torch.zeros(kv_rows, hidden),
            "attn_output": torch.zeros(hidden, q_rows),
        }
        for name, tensor in parts.items():
            yield f"blk.{number}.{name}.weight", tensor
        return
    yield f"blk.{number}.attn_norm.weight", getattr(decoder, adapter.attn_norm).weight
    q, k, v, o = _attention_projections(getattr(decoder, adapter.attn), layer, adapter)
    for name, (weight, bias), heads in (
        ("attn_q", q, layer.heads), ("attn_k", k, layer.kv_heads), ("attn_v", v, None),
        ("attn_output", o, None),
    ):  # fmt: skip
        if heads is not None:
            weight, bias = _rope_pairs(weight, heads), _rope_pairs(bias, heads)
        yield f"blk.{number}.{name}.weight", weight
        if bias is not None:
            yield f"blk.{number}.{name}.bias", bias


def _mlp_tensors(number: int, layer: GgufLayer, decoder, adapter: Adapter):
    if layer.ffn == 0:
        return
    hidden = adapter.config.hidden_size
    if layer.mlp_stand_in:
        parts = {
            "ffn_norm": torch.ones(hidden),
            "ffn_gate": torch.zeros(1, hidden),
            "ffn_up": torch.zeros(1, hidden),
            "ffn_down": torch.zeros(hidden, 1),
        }
        for name, tensor in parts.items():
            yield f"blk.{number}.{name}.weight", tensor
        return
    yield f"blk.{number}.ffn_norm.weight", getattr(decoder, adapter.mlp_norm).weight
    gate, up, down = _mlp_projections(getattr(decoder, adapter.mlp), layer)
    for name, (weight, bias) in (("ffn_gate", gate), ("ffn_up", up), ("ffn_down", down)):
        yield f"blk.{number}.{name}.weight", weight
        if bias is not None:
            yield f"blk.{number}.{name}.bias", bias


Projection = tuple[torch.Tensor, torch.Tensor | None]


def _linear(module: nn.Module) -> Projection:
    return module.weight, module.bias


def _attention_projections(attention: nn.Module, layer: GgufLayer, adapter: Adapter):
    """q, k, v, o as (weight, bias); Phi-3's fused ``qkv_proj`` is split by rows."""
    if hasattr(attention, "qkv_proj"):
        sizes = [layer.heads * adapter.head_dim] + [layer.kv_heads * adapter.head_dim] * 2
        weight, bias = _linear(attention.qkv_proj)
        weights = torch.split(weight, sizes)
        biases = torch.split(bias, sizes) if bias is not None else (None,) * 3
        q, k, v = zip(weights, biases, strict=True)
    else:
        q, k, v = (_linear(getattr(attention, f"{name}_proj")) for name in "qkv")
    return q, k, v, _linear(attention.o_proj)


def _mlp_projections(mlp: nn.Module, layer: GgufLayer):
    """gate, up, down as (weight, bias); Phi-3's fused ``gate_up_proj`` is split by rows."""
    if hasattr(mlp, "gate_up_proj"):
        weight, bias = _linear(mlp.gate_up_proj)
        gate, up = torch.split(weight, layer.ffn)
        biases = torch.split(bias, layer.ffn) if bias is not None else (None, None)
        return (gate, biases[0]), (up, biases[1]), _linear(mlp.down_proj)
    return _linear(mlp.gate_proj), _linear(mlp.up_proj), _linear(mlp.down_proj)


def _rope_pairs(tensor: torch.Tensor | None, heads: int) -> torch.Tensor | None:
    """Reorder each head's rows from transformers' halves (d, d + head/2) to llama.cpp's
    neighbours (2i, 2i + 1)."""
    if tensor is None:
        return None
    rows = tensor.shape[0]
    return (
        tensor.reshape(heads, 2, rows // heads // 2, *tensor.shape[1:])
        .swapaxes(1, 2)
        .reshape(tensor.shape)
    )


def _llama3_rope_factors(rope: dict, head_dim: int) -> torch.Tensor:
    """Llama 3's per-frequency RoPE factors, as transformers computes its frequencies."""
    base, factor = float(rope["rope_theta"]), float(rope["factor"])
    low, high = float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    old_context = float(rope["original_max_position_embeddings"])
    frequencies = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    wavelengths = 2 * torch.pi / frequencies
    smooth = (old_context / wavelengths - low) / (high - low)
    factors = 1.0 / ((1 - smooth) / factor + smooth)
    factors = torch.where(wavelengths < old_context / high, torch.ones_like(factors), factors)
    factors = torch.where(
        wavelengths > old_context / low, torch.full_like(factors, factor), factors
    )
    return factors.float()


# --- storage ----------------------------------------------------------------------------------
class _Deferred:
    """A tensor converted to its stored form only when the writer reaches it, so the host
    holds one tensor at a time, not a second copy of the model."""

    def __init__(self, tensor, kind, shape, dtype, nbytes, on_written):
        self.tensor, self.kind, self.shape, self.dtype = tensor, kind, shape, dtype
        self.nbytes, self.on_written = nbytes, on_written

    def add_to(self, writer, name: str) -> None:
        import gguf

        raw = getattr(gguf.GGMLQuantizationType, self.kind.upper())
        writer.add_tensor(name, self, raw_dtype=raw)

    def tofile(self, file) -> None:
        # A file write, not numpy's tofile: a full disk then raises ENOSPC, not a bare count.
        file.write(np.ascontiguousarray(self.array()).data)
        self.on_written(self.nbytes)

    def array(self) -> np.ndarray:
        import gguf

        values = self.tensor.detach().to("cpu", torch.float32)
        if self.kind == "f32":
            return values.numpy()
        if self.kind == "f16":
            return values.to(torch.float16).numpy()
        if self.kind == "bf16":
            return values.to(torch.bfloat16).view(torch.int16).numpy()
        return gguf.quants.quantize(values.numpy(), gguf.GGMLQuantizationType.Q8_0)


def _stored(
    tensor: torch.Tensor, name: str, gguf_type: str, on_written: Callable[[int], None]
) -> _Deferred:
    """How ``tensor`` is stored: 1-D ones and RoPE factors in float32; q8_0 where rows split into
    its 32-value blocks, float16 where they do not (a narrowed width need not)."""
    import gguf

    kind = gguf_type
    if tensor.dim() == 1 or name.startswith("rope_freqs"):
        kind = "f32"
    elif kind == "q8_0" and tensor.shape[-1] % Q8_0_BLOCK:
        kind = "f16"
    shape = tuple(tensor.shape)
    if kind == "q8_0":
        byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, gguf.GGMLQuantizationType.Q8_0)
        return _Deferred(tensor, kind, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                         on_written)  # fmt: skip
    dtype = {"f32": np.float32, "f16": np.float16, "bf16": np.int16}[kind]
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return _Deferred(tensor, kind, shape, np.dtype(dtype), nbytes, on_written)


__all__ = [
    "GgufLayer",
    "GgufResult",
    "describe_gguf",
    "export_gguf",
    "gguf_layers",
]
