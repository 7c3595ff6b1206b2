"""A session's files checked against each other and against its model, before a resume writes
anything.

Someone edits, truncates or copies a file into a session folder; resuming on it would fail deep
inside a long load (or worse, rewrite plan.json from half a replay). So ``--resume`` first
reads every file it will trust and checks it against the model's geometry, taken from its
config on the meta device (no weights, about a second even for a 7B model): each problem is
one :class:`~.errors.BadInput` naming the file and the line or key, and nothing is changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import BadInput
from ..model.adapters import Adapter, adapter_for
from ..model.channel_order import check_order, read_order
from ..model.loading import is_mptui_export, load_config
from ..recovery.folder import RecoveryFolder
from ..search.plan import PlanStep, read_plan_file
from .files import JOURNAL, PLAN
from .folder import SavedRun, SessionFolder


def meta_adapter(model: str) -> Adapter:
    """The adapter of ``model`` built from its config alone, on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(model)
    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(config, trust_remote_code=is_mptui_export(model))
    return adapter_for(built)


def check_session(folder: SessionFolder, saved: SavedRun) -> None:
    """The journal's steps, plan.json, the channel order and a recovery's checkpoint of the
    session ``saved`` was read from, each checked against its model."""
    model = saved.request.model
    adapter = meta_adapter(model)
    replay = folder.read_journal()
    check_steps(adapter, replay.steps, replay.lines, folder.path / JOURNAL)
    plan_path = folder.path / PLAN
    if plan_path.is_file():
        plan = read_plan_file(plan_path).model
        dense = (adapter.num_layers, adapter.dense_mlp_width, dense_attn_width(adapter))
        found = (plan.num_layers, plan.mlp_width, plan.attn_width)
        if plan.name_or_path != model or found != dense:
            raise BadInput(
                f"{plan_path} is the plan of another model (its model.name_or_path is "
                f"{plan.name_or_path!r}, {found[0]} layers; this session prunes {model!r}, "
                f"{dense[0]} layers)"
            )
    if folder.order_file.is_file():
        check_order(adapter, read_order(folder.order_file), folder.order_file)
    RecoveryFolder(folder.path).load()  # checks the checkpoint's rank against its settings


def dense_attn_width(adapter: Adapter) -> int:
    return adapter.dense_kv_groups * adapter.attn_group_channels


def check_steps(
    adapter: Adapter, steps: Sequence[PlanStep], lines: Sequence[int], path: Path
) -> None:
    """Every step removes something the model still has, in order; the first that does not is
    named with its line of ``path``."""
    layers = adapter.num_layers
    mlp = [adapter.mlp_width(layer) for layer in range(layers)]
    attn = [adapter.attn_groups(layer) * adapter.attn_group_channels for layer in range(layers)]
    for step, line in zip(steps, lines, strict=True):
        structure, problem = step.structure, None
        layer, width = structure.layer, structure.width_after
        if not 0 <= layer < layers:
            problem = f"the model has {layers} layers"
        elif structure.kind in ("mlp_block", "mlp_channels") and not mlp[layer]:
            problem = f"the MLP of layer {layer} is already removed"
        elif structure.kind in ("attn_block", "attn_heads") and not attn[layer]:
            problem = f"the attention of layer {layer} is already removed"
        elif structure.kind == "mlp_channels" and not 0 < width < mlp[layer]:
            problem = f"the MLP of layer {layer} is {mlp[layer]} channels wide"
        elif structure.kind == "attn_heads" and not (
            0 < width < attn[layer] and width % adapter.attn_group_channels == 0
        ):
            problem = (
                f"the attention of layer {layer} is {attn[layer]} query channels wide, in "
                f"groups of {adapter.attn_group_channels}"
            )
        if problem is not None:
            raise BadInput(
                f"{path} line {line}: step {step.index} ({structure.id}) does not fit the "
                f"model ({problem})"
            )
        if structure.kind == "mlp_block":
            mlp[layer] = 0
        elif structure.kind == "attn_block":
            attn[layer] = 0
        elif structure.kind == "mlp_channels":
            mlp[layer] = width
        else:
            attn[layer] = width
