"""Where the model to recover comes from: a session (its plan re-applied to the dense model, as
``mptui export`` does) or an export folder (loaded as it is)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import BadInput
from ..export import is_export
from ..loading import load_model
from ..plan import Plan, read_plan_file
from ..session_folder import SessionFolder
from ..surgery import apply_plan

Progress = Callable[[int, int], None]


def describe_source(path: Path) -> dict:
    """``{"session": PATH}`` or ``{"export": PATH}``; anything else is one clear line."""
    path = Path(path).expanduser()
    if (path / "settings.json").is_file() and (path / "plan.json").is_file():
        return {"session": str(path)}
    if is_export(path):
        return {"export": str(path)}
    raise BadInput(f"'{path}' is neither an mptui session nor an mptui export (no plan.json)")


def read_source_plan(source: dict) -> Plan:
    """The plan of ``source``; a plan that removed nothing has nothing to recover."""
    path = Path(source.get("session") or source["export"])
    plan = read_plan_file(path / "plan.json")
    if not plan.steps:
        raise BadInput(f"'{path}' removed nothing (its plan has no steps): nothing to recover")
    return plan


def load_pruned(
    source: dict,
    dtype: str | None = None,
    device: str | None = None,
    on_shard: Progress | None = None,
):
    """``(model, tokenizer, plan)``: the pruned model as the search left it."""
    plan = read_source_plan(source)
    if "session" in source:
        folder = SessionFolder(Path(source["session"]))
        base = plan.model.name_or_path
        model, tokenizer = load_model(
            base, dtype=dtype or plan.model.dtype, device=device, on_shard=on_shard
        )
        apply_plan(model, plan, folder.order_file)
    else:
        model, tokenizer = load_model(
            source["export"], dtype=dtype, device=device, on_shard=on_shard
        )
    return model, tokenizer, plan


def recovered_model(pruned, session: Path):
    """``pruned`` (rebuilt from the session) with the session's saved adapter merged into it,
    in place; None when the session holds no recovery."""
    from peft import set_peft_model_state_dict

    from .folder import RecoveryFolder
    from .lora import add_adapters

    folder = RecoveryFolder(session)
    state = folder.load()
    if state is None:
        return None
    settings, _ = folder.read_settings()
    wrapped = add_adapters(pruned, settings)
    set_peft_model_state_dict(wrapped, state["adapter"])
    return wrapped.merge_and_unload().eval()
