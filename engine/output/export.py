"""Export a pruned model as a real, smaller checkpoint that loads without mptui.

The folder holds exactly the kept parameters (safetensors, sharded like transformers does), a
config, the tokenizer, ``plan.json`` and a model card. Two cases:

- the plan removed only whole layers (both sub-blocks of each touched layer): the remaining
  layers are renumbered and the stock config says fewer layers, so it loads with no remote code;
- anything else: the config (still of the family's model type, so ``AutoTokenizer`` and config
  readers need no remote code) gets an ``mptui_layout`` and an ``auto_map`` to the carried
  modeling code (:mod:`.pruned_modeling`); the weights are the ``mptui`` variant
  (``model.mptui.safetensors``), which a stock class does not look for, so the model loads only
  with ``trust_remote_code=True``, strictly: a missing or changed weight is an error.

The folder is written next to its destination and renamed into place at the end, so an
interrupted export never leaves a half checkpoint where a good one is expected.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import BadInput, EngineError
from ..model import pruned_modeling
from ..model.adapters import Adapter, adapter_for
from ..model.facts import family_model_types
from ..model.loading import load_config
from ..names import looks_like_path, model_source
from ..search.plan import Plan, as_plan
from ..session.disk import staged_folder
from ..session.files import PLAN
from ..session.summary import markdown, summarize

#: Largest safetensors shard, as transformers' default.
MAX_SHARD_BYTES = 5 * 1024**3
MODELING_FILE = "modeling_mptui.py"
#: The model type of exports made before they kept their family's (they still load).
LEGACY_MODEL_TYPE = "mptui_pruned"
TOKENIZER_CONFIG = "tokenizer_config.json"
#: What transformers records in a tokenizer about the place it was loaded from (5.x sets
#: ``is_local`` and ``local_files_only`` on every load) and then saves as if it were a setting:
#: on another machine ``local_files_only: true`` would stop a hub download, so none of it ships.
LOAD_TIME_KEYS = (
    "is_local",
    "local_files_only",
    "cache_dir",
    "force_download",
    "proxies",
    "revision",
    "subfolder",
    "token",
    "trust_remote_code",
    "_commit_hash",
)
_FAMILY_LINE = re.compile(r"^from transformers import (\w+) as (Family\w+)  # mptui: family$", re.M)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    params: int
    bytes: int
    stock: bool  # loads without remote code
    seconds: float


def export_model(
    model: nn.Module,
    tokenizer,
    plan: Plan | dict,
    out_dir: Path,
    *,
    progress: Progress | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    recovery: dict | None = None,
) -> ExportResult:
    """Write ``model`` (already pruned to ``plan``) to ``out_dir``; see the module docstring.

    ``recovery``: how the weights were fine-tuned after pruning (the recovery settings, step and
    validation perplexities), for the model card; None for a model as the search left it."""
    started = time.monotonic()
    plan = as_plan(plan)
    out_dir = Path(out_dir).expanduser()
    check_destination(out_dir)
    adapter = adapter_for(model)
    layout = pruned_layout(adapter)
    dropped = whole_layers_removed(adapter, layout)
    stock = dropped is not None
    dtype = storage_dtype(model, plan.model.name_or_path)
    tensors = _kept_tensors(model, adapter, dropped if stock else [])
    with staged_folder(out_dir, f"the export {out_dir.name!r} (none of it was kept)") as staging:
        variant = None if stock else pruned_modeling.WEIGHTS_VARIANT
        size = _write_safetensors(tensors, dtype, staging, max_shard_bytes, progress, variant)
        if stock:
            _write_stock_config(model, adapter, dropped, dtype, staging)
        else:
            _write_pruned_config(model, layout, dtype, staging)
            (staging / MODELING_FILE).write_text(modeling_source(model))
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
            _drop_load_time_keys(staging / TOKENIZER_CONFIG)
        _write_json(staging / PLAN, plan.to_dict())
        (staging / "README.md").write_text(model_card(plan, stock, dtype, recovery))
    params = sum(t.numel() for t in tensors.values())
    return ExportResult(out_dir, params, size, stock, time.monotonic() - started)


# --- what was pruned, as data -----------------------------------------------------------------
def pruned_layout(adapter: Adapter) -> dict:
    """The ``mptui_layout`` of :mod:`.pruned_modeling` for the model as it is now."""
    names = {id(module): name for name, module in adapter.model.named_modules()}
    layout: dict[str, dict] = {"removed": {}, "shapes": {}, "attributes": {}}
    for index, layer in enumerate(adapter.layers):
        prefix = names[id(layer)]
        for role, norm, block in (
            ("attention", adapter.attn_norm, adapter.attn),
            ("mlp", adapter.mlp_norm, adapter.mlp),
        ):
            if pruned_modeling.is_removed(getattr(layer, block)):
                layout["removed"][f"{prefix}.{block}"] = role
                layout["removed"][f"{prefix}.{norm}"] = "norm"
        width = adapter.mlp_width(index)
        if width and width != adapter.dense_mlp_width:
            module = adapter.sub_module(index, adapter.mlp)
            _record_narrowed(layout, f"{prefix}.{adapter.mlp}", module)
            layout["attributes"][f"{prefix}.{adapter.mlp}"] = adapter.mlp_attributes(module, width)
        groups = adapter.attn_groups(index)
        if groups and groups != adapter.dense_kv_groups:
            module = adapter.sub_module(index, adapter.attn)
            _record_narrowed(layout, f"{prefix}.{adapter.attn}", module)
            layout["attributes"][f"{prefix}.{adapter.attn}"] = adapter.attn_attributes(
                module, groups
            )
    return layout


def _record_narrowed(layout: dict, path: str, module: nn.Module) -> None:
    for name, parameter in module.named_parameters():
        layout["shapes"][f"{path}.{name}"] = list(parameter.shape)


def whole_layers_removed(adapter: Adapter, layout: dict) -> list[int] | None:
    """The layers removed whole, when that is all the plan did; else None."""
    if layout["shapes"] or layout["attributes"]:
        return None
    dropped = []
    for index in range(adapter.num_layers):
        attn, mlp = adapter.has_block(index, "attn"), adapter.has_block(index, "mlp")
        if attn != mlp:
            return None
        if not attn:
            dropped.append(index)
    return dropped


def describe_export(result) -> str:
    """One line for an :class:`ExportResult` or an ``Exported`` event (same fields)."""
    how = (
        "a stock checkpoint (loads without remote code)"
        if result.stock
        else "loads with AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)"
    )
    return (
        f"exported to {result.path}: {result.params:,} parameters, "
        f"{result.bytes / 1e9:.2f} GB in {result.seconds:.1f}s; {how}"
    )


# --- weights ----------------------------------------------------------------------------------
def storage_dtype(model: nn.Module, base: str) -> torch.dtype:
    """The base checkpoint's half precision when the search ran in float32 (as on a CPU).

    Those float32 weights were widened from it, so narrowing them back is exact, and the export
    is not twice the size it needs to be. Otherwise the weights are stored as they are.
    """
    live = next(model.parameters()).dtype
    if live != torch.float32:
        return live
    try:
        source = str(getattr(load_config(base), "dtype", None) or "").removeprefix("torch.")
    except EngineError:
        return live
    return getattr(torch, source) if source in ("float16", "bfloat16") else live


def _kept_tensors(model: nn.Module, adapter: Adapter, dropped: list[int]) -> dict:
    """The state dict to save: tied copies left out, dropped layers out and the rest renumbered."""
    state = model.state_dict()
    tied = _tied_targets(model, state)
    prefix = next(n for n, m in model.named_modules() if m is adapter.layers) + "."
    renumber = {}
    kept_layers = [i for i in range(adapter.num_layers) if i not in set(dropped)]
    for new, old in enumerate(kept_layers):
        renumber[str(old)] = str(new)
    tensors = {}
    for name, tensor in state.items():
        if name in tied:
            continue
        if name.startswith(prefix):
            index, _, rest = name[len(prefix) :].partition(".")
            if index not in renumber:
                continue
            name = f"{prefix}{renumber[index]}.{rest}"
        tensors[name] = tensor
    return tensors


def _tied_targets(model: nn.Module, state: dict) -> set[str]:
    """Keys that are the same tensor as another, kept key (an lm_head tied to the embeddings)."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return {
        target
        for target, source in tied.items()
        if target in state
        and source in state
        and state[target].data_ptr() == state[source].data_ptr()
    }


def weight_files(shards: int, variant: str | None) -> tuple[list[str], str]:
    """The safetensors file names of ``shards`` shards and of their index, as transformers names
    them (``model.safetensors``, ``model-00001-of-00002.safetensors``), with ``variant``
    (``model.mptui.safetensors``) for a pruned export's weights (see
    :data:`.pruned_modeling.WEIGHTS_VARIANT`)."""
    tail = f".{variant}.safetensors" if variant else ".safetensors"
    names = (
        [f"model{tail}"]
        if shards == 1
        else [f"model-{i:05d}-of-{shards:05d}{tail}" for i in range(1, shards + 1)]
    )
    index = f"model.safetensors.index.{variant}.json" if variant else "model.safetensors.index.json"
    return names, index


def _write_safetensors(
    tensors: dict,
    dtype: torch.dtype,
    folder: Path,
    max_shard_bytes: int,
    progress: Progress | None,
    variant: str | None,
) -> int:
    """Shards written one at a time, each cast to ``dtype`` on the CPU: the device never holds
    a second copy of the model, the host at most one shard."""
    from safetensors.torch import save_file

    def stored(tensor: torch.Tensor) -> torch.Tensor:
        on_cpu = tensor.detach().to("cpu")
        return (on_cpu.to(dtype) if on_cpu.is_floating_point() else on_cpu).contiguous()

    def stored_size(tensor: torch.Tensor) -> int:
        itemsize = dtype.itemsize if tensor.is_floating_point() else tensor.element_size()
        return tensor.numel() * itemsize

    shards: list[dict] = [{}]
    shard_bytes = 0
    for name, tensor in tensors.items():
        size = stored_size(tensor)
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensor
        shard_bytes += size
    total = sum(stored_size(t) for t in tensors.values())
    names, index_name = weight_files(len(shards), variant)
    written = 0
    weight_map = {}
    for file_name, shard in zip(names, shards, strict=True):
        on_cpu = {name: stored(t) for name, t in shard.items()}
        save_file(on_cpu, str(folder / file_name), metadata={"format": "pt"})
        written += sum(t.numel() * t.element_size() for t in on_cpu.values())
        weight_map.update(dict.fromkeys(shard, file_name))
        if progress is not None:
            progress(written, total)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _write_json(folder / index_name, index)
    return total


# --- config and code --------------------------------------------------------------------------
def _config_dict(model: nn.Module, dtype: torch.dtype) -> dict:
    config = model.config.to_dict()
    config["dtype"] = str(dtype).removeprefix("torch.")
    config.pop("_name_or_path", None)
    return config


def _write_stock_config(
    model: nn.Module, adapter: Adapter, dropped: list[int], dtype: torch.dtype, folder: Path
) -> None:
    config = _config_dict(model, dtype)
    kept = [i for i in range(adapter.num_layers) if i not in set(dropped)]
    layers_key = next(
        key for key in ("num_hidden_layers", "n_layer", "num_layers") if key in config
    )
    config[layers_key] = len(kept)
    if isinstance(config.get("layer_types"), list):
        config["layer_types"] = [config["layer_types"][i] for i in kept]
    _write_json(folder / "config.json", config)


def _write_pruned_config(model: nn.Module, layout: dict, dtype: torch.dtype, folder: Path) -> None:
    config = _config_dict(model, dtype)
    # The family's own type (an export pruned again, made before mptui kept it, says otherwise)
    config["model_type"] = next(
        kind for kind in family_model_types(model.config) if kind != LEGACY_MODEL_TYPE
    )
    config["architectures"] = [pruned_modeling.MptuiPrunedForCausalLM.__name__]
    module = Path(MODELING_FILE).stem
    config["auto_map"] = {
        "AutoConfig": f"{module}.{pruned_modeling.MptuiPrunedConfig.__name__}",
        "AutoModelForCausalLM": f"{module}.{pruned_modeling.MptuiPrunedForCausalLM.__name__}",
    }
    config["mptui_layout"] = layout
    _write_json(folder / "config.json", config)


def modeling_source(model: nn.Module) -> str:
    """The carried modeling code, with its family import naming ``model``'s classes."""
    source = Path(pruned_modeling.__file__).read_text()
    classes = {
        "FamilyConfig": _transformers_class(type(model.config)).__name__,
        "FamilyForCausalLM": _transformers_class(type(model)).__name__,
    }
    found = []

    def rename(match: re.Match) -> str:
        alias = match.group(2)
        found.append(alias)
        return match.group(0).replace(match.group(1), classes[alias], 1)

    source = _FAMILY_LINE.sub(rename, source)
    if sorted(found) != sorted(classes):
        raise RuntimeError("the carried modeling code lost its family import lines")
    return source


def _transformers_class(cls: type) -> type:
    """The first class in ``cls``'s ancestry that transformers itself defines: the family's,
    also when ``cls`` is an export's own class (a pruned export pruned again)."""
    return next(c for c in cls.__mro__ if c.__module__.startswith("transformers.models."))


# --- card and destination -----------------------------------------------------------------
def model_card(
    plan: Plan | dict, stock: bool, dtype: torch.dtype, recovery: dict | None = None
) -> str:
    plan = as_plan(plan)
    base = plan.model.name_or_path
    summary = summarize(plan)
    remote = "" if stock else ", trust_remote_code=True"
    how = (
        "The plan removed whole layers only: this is a stock checkpoint with fewer layers."
        if stock
        else "Layers have different widths, so the folder carries its modeling code "
        f"(`{MODELING_FILE}`, built on transformers' own classes); load it with "
        "`trust_remote_code=True`. A missing or changed weight makes loading fail."
    )
    return "\n".join(
        [
            "---",
            "base_model: local" if looks_like_path(base) else f"base_model: {base}",
            "library_name: transformers",
            "tags: [mptui, multipruner, pruned]"
            if not recovery
            else "tags: [mptui, multipruner, pruned, lora, recovered]",
            "---",
            "",
            f"Pruned from {model_source(base)} by mptui (MultiPruner, no training): "
            f"{summary['ratio']:.2%} of the parameters removed, {summary['params']:,} kept.",
            "",
            *([recovery_paragraph(recovery), ""] if recovery else []),
            how,
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'model = AutoModelForCausalLM.from_pretrained("PATH"{remote})',
            f'tokenizer = AutoTokenizer.from_pretrained("PATH"{remote})',
            "```",
            "",
            f"Weights in {str(dtype).removeprefix('torch.')}. `plan.json` lists every removal "
            "in order. The license is the base model's.",
            "",
            markdown(summary),
        ]
    )


def recovery_paragraph(recovery: dict) -> str:
    """How the pruned weights were fine-tuned (docs/method.md §10), for a model card."""
    s = recovery["settings"]
    data = f"the local file {Path(s['data']).name}" if looks_like_path(s["data"]) else s["data"]
    text = (
        f"Then recovered by LoRA fine-tuning (peft; rank {s['rank']}, alpha {s['alpha']}, on "
        f"{', '.join(s['targets'])}; AdamW, learning rate {s['lr']:g} with {s['warmup']} warm-up "
        f"steps and linear decay; {recovery['step']} of {s['steps']} steps of "
        f"{s['batch_size']} x {s['grad_accum']} examples of at most {s['seqlen']} tokens) on "
        f"{data}, and the adapter merged into these weights: the parameter count is the "
        "pruned model's."
    )
    before, after = recovery.get("pruned_perplexity"), recovery.get("perplexity")
    if before is not None and after is not None:
        text += f" Validation perplexity {before:.3f} pruned -> {after:.3f} recovered."
    return text


def _drop_load_time_keys(path: Path) -> None:
    """Remove :data:`LOAD_TIME_KEYS` from a saved ``tokenizer_config.json`` (absent: nothing)."""
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    kept = {key: value for key, value in config.items() if key not in LOAD_TIME_KEYS}
    if kept != config:  # as transformers writes it: its key order, non-ASCII kept as text
        path.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_json(path: Path, data: dict) -> None:
    """A plain write: the whole staging folder is renamed into place at the end."""
    path.write_text(json.dumps(data, indent=2) + "\n")


def check_destination(out_dir: Path) -> None:
    """Never write over a folder that is not a previous export."""
    if out_dir.is_file():
        raise BadInput(f"export destination '{out_dir}' is a file")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_export(out_dir):
        raise BadInput(
            f"export destination '{out_dir}' is not empty and holds no earlier export; "
            "choose a new folder"
        )


def is_export(folder: Path) -> bool:
    return (folder / PLAN).is_file() and (folder / "config.json").is_file()


__all__ = [
    "ExportResult",
    "describe_export",
    "export_model",
    "is_export",
    "model_card",
    "modeling_source",
    "pruned_layout",
    "whole_layers_removed",
]
