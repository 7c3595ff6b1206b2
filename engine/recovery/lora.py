"""LoRA adapters on the pruned model as mptui runs it, through peft.

Narrowed projections are ordinary ``nn.Linear`` modules of their new shape, so peft gives them
adapters of that shape; a removed sub-block is a placeholder with no projection inside, so it
gets none. Targets are short names: ``q`` matches a module called ``q`` or ``q_proj``.
"""

from __future__ import annotations

import copy
import warnings

from torch import nn

from ..errors import BadInput, setting


def _adaptable(module: nn.Module) -> bool:
    """What peft's LoRA wraps: linear layers (and GPT-2's Conv1D, which has ``nf``)."""
    return isinstance(module, nn.Linear) or hasattr(module, "nf")


def resolve_targets(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """The module leaf names ``targets`` stand for; a target that matches nothing is an error."""
    leaves = {name.rpartition(".")[2] for name, m in model.named_modules() if _adaptable(m)}
    resolved = []
    for target in targets:
        found = [leaf for leaf in (target, f"{target}_proj") if leaf in leaves]
        if not found:
            have = ", ".join(sorted(leaves - {"lm_head"}))
            raise BadInput(
                setting("recovery.targets"),
                f": this model has no module '{target}' (it has: {have})",
            )
        resolved.append(found[0])
    return resolved


def lora_config(settings, targets: list[str]):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def add_adapters(model: nn.Module, settings):
    """Wrap ``model`` (in place, as peft does) with fresh adapters; the base stays frozen."""
    from peft import get_peft_model

    targets = resolve_targets(model, settings.targets)
    with warnings.catch_warnings():  # peft asks transformers a deprecated question
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, lora_config(settings, targets))


def merged_copy(peft_model) -> nn.Module:
    """The adapters merged into a copy of the base weights; the training model is untouched."""
    merged = copy.deepcopy(peft_model).merge_and_unload()
    merged.eval()
    return merged
