"""The engine's public API: the one module scripts, the app and the CLIs import.

>>> from mptui.engine.api import prune
>>> plan = prune("meta-llama/Llama-2-7b-hf", calibration="alpaca.jsonl", target_ratio=0.2195)

For live control, build a :class:`RunRequest`, start an :class:`Engine` in a thread, subscribe
to its events and :meth:`Engine.send` it commands (docs/engine.md has the states and commands).
:class:`EngineServer` serves an engine on its session folder's socket; :func:`attach` gives a
:class:`RemoteEngine` with the same interface from another process (docs/engine.md, *Wire
protocol*).

Importing this module is cheap: the plain-value parts (commands, events, errors, defaults,
structures, settings, requests) load at once, everything that needs torch on first use, so
``mptui --help`` stays instant while it names the defaults.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import commands, events, session_files, wire
from .defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DISTRIBUTION,
    DEFAULT_DTYPE,
    DEFAULT_EVAL_BATCH_SIZE,
    DEFAULT_LORA_ALPHA,
    DEFAULT_LORA_RANK,
    DEFAULT_LORA_TARGETS,
    DEFAULT_NSAMPLES,
    DEFAULT_ORDER,
    DEFAULT_RECOVERY_BATCH,
    DEFAULT_RECOVERY_EVAL_EVERY,
    DEFAULT_RECOVERY_GRAD_ACCUM,
    DEFAULT_RECOVERY_LR,
    DEFAULT_RECOVERY_SAVE_EVERY,
    DEFAULT_RECOVERY_SEQLEN,
    DEFAULT_RECOVERY_STEPS,
    DEFAULT_RECOVERY_WARMUP,
    DEFAULT_SEED,
    DEFAULT_SEQLEN,
    DEFAULT_TARGET_RATIO,
    DEFAULT_TEXT_FIELD,
    DEFAULT_THEME,
)
from .errors import (
    BadInput,
    CalibrationError,
    Cancelled,
    DiskFull,
    EngineError,
    OutOfMemory,
    UnsupportedModel,
)
from .eval_request import EvalRequest
from .events import ActivityKind, EngineState
from .gguf_rules import GGUF_TYPES, check_gguf_architecture, check_gguf_destination
from .methods import method_named
from .names import check_model_path, model_label
from .recovery import events as recovery_events
from .recovery.settings import RecoverySettings, parse_targets
from .remote import RemoteEngine, attach
from .run_request import RunRequest
from .run_view import MEMORY_HISTORY, CandidateRow, CurvePoint, RecoveryView, RunView
from .server import EngineServer, parse_listen
from .settings import FAITHFUL_CALIBRATION, CalibrationSpec, PruneSettings
from .structures import DIMENSIONS, Structure

if TYPE_CHECKING:
    from .runner import Subscriber

#: Names that need torch, by the module that defines them; loaded on first access.
_LAZY: dict[str, str] = {
    "Engine": "runner",
    "Outcome": "runner",
    "preflight": "session_setup",
    "load_documents": "calibration",
    "split_documents": "calibration",
    "tokenize_chunks": "calibration",
    "SessionFolder": "session_folder",
    "SessionRecorder": "session_folder",
    "check_session": "session_check",
    "describe_export": "export",
    "export_model": "export",
    "check_destination": "export",
    "export_gguf": "gguf_export",
    "describe_gguf": "gguf_export",
    "apply_plan": "rebuild",
    "rebuild_pruned": "rebuild",
    "Comparison": "comparison",
    "Scores": "comparison",
    "compare_sessions": "comparison",
    "sibling_comparison": "comparison",
    "SpeedRequest": "comparison",
    "tokens_per_second": "comparison",
    "ratio_text": "comparison",
    "task_text": "comparison",
    "check_tasks": "evaluate",
    "evaluate": "evaluate",
    "flat_scores": "evaluate",
    "load_model": "loading",
    "load_config": "loading",
    "write_summary": "summary",
    "run_headless": "headless",
    "LinePrinter": "headless",
    "adapter_for": "adapters",
    "Scorer": "scoring",
    "Plan": "plan",
    "PlanStep": "plan",
    "LayerRow": "plan",
    "layer_rows": "plan",
    "read_plan_file": "plan",
    "write_json_atomic": "disk",
    "write_bytes_atomic": "disk",
    "device_failed": "device_failure",
    "is_device_failure": "device_failure",
    "lost_device_of": "device_failure",
    "Team": "team",
    "pin_gpus": "team",
    "follow": "follower",
    "on_replica_device": "follower",
    "RecoveryFolder": "recovery.folder",
    "RecoverySource": "recovery.source",
    "recovered_model": "recovery.folder",
    "check_recovery": "recovery.run",
    "prepare_recovery": "recovery.run",
}
#: Where a public name differs from the name in its module.
_RENAMED = {"run_headless": "run", "check_recovery": "check", "prepare_recovery": "prepare"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__package__}.{_LAZY[name]}")
    value = getattr(module, _RENAMED.get(name, name))
    globals()[name] = value
    return value


def prune(
    model: str,
    *,
    calibration: str,
    target_ratio: float = DEFAULT_TARGET_RATIO,
    distribution: str = DEFAULT_DISTRIBUTION,
    order: str = ",".join(DEFAULT_ORDER),
    nsamples: int = DEFAULT_NSAMPLES,
    seqlen: int = DEFAULT_SEQLEN,
    seed: int = DEFAULT_SEED,
    text_field: str = DEFAULT_TEXT_FIELD,
    subscribers: list[Subscriber] | None = None,
    dtype: str | None = None,
    device: str | None = None,
    device_map: str | None = None,
    cache_dir: Path | None = None,
    **options,
) -> dict:
    """Run the search to the end and return the plan: MultiPruner, or the ``method`` option's
    (docs/method.md §11).

    Raises the engine's own error (:class:`OutOfMemory`, :class:`BadInput`, …) when the run
    failed. ``options`` are the remaining :class:`PruneSettings` fields (``mlp_group``,
    ``attn_group``, ``block_count``, ``batch_size``, ``prefix_cache``, ``faithful``, ``method``).
    """
    from .runner import Engine

    settings = PruneSettings.with_distribution(
        target_ratio,
        distribution,
        order,
        calibration=CalibrationSpec(calibration, nsamples, seqlen, seed, text_field),
        **options,
    )
    request = RunRequest(
        model, settings, dtype=dtype, device=device, device_map=device_map, cache_dir=cache_dir
    )
    engine = Engine(request, list(subscribers or []))
    result = engine.run()
    if engine.failure is not None:
        raise engine.failure
    return result.plan


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LORA_ALPHA",
    "DEFAULT_LORA_RANK",
    "DEFAULT_LORA_TARGETS",
    "DEFAULT_RECOVERY_BATCH",
    "DEFAULT_RECOVERY_EVAL_EVERY",
    "DEFAULT_RECOVERY_GRAD_ACCUM",
    "DEFAULT_RECOVERY_LR",
    "DEFAULT_RECOVERY_SAVE_EVERY",
    "DEFAULT_RECOVERY_SEQLEN",
    "DEFAULT_RECOVERY_STEPS",
    "DEFAULT_RECOVERY_WARMUP",
    "DEFAULT_DISTRIBUTION",
    "DEFAULT_DTYPE",
    "DEFAULT_EVAL_BATCH_SIZE",
    "DEFAULT_NSAMPLES",
    "DEFAULT_ORDER",
    "DEFAULT_SEED",
    "DEFAULT_SEQLEN",
    "DEFAULT_TARGET_RATIO",
    "DEFAULT_TEXT_FIELD",
    "DEFAULT_THEME",
    "DIMENSIONS",
    "FAITHFUL_CALIBRATION",
    "MEMORY_HISTORY",
    "ActivityKind",
    "BadInput",
    "CandidateRow",
    "CurvePoint",
    "CalibrationError",
    "CalibrationSpec",
    "Cancelled",
    "DiskFull",
    "EngineError",
    "EngineServer",
    "EngineState",
    "EvalRequest",
    "GGUF_TYPES",
    "OutOfMemory",
    "PruneSettings",
    "RemoteEngine",
    "RecoverySettings",
    "RunRequest",
    "RecoveryView",
    "RunView",
    "Structure",
    "UnsupportedModel",
    "attach",
    "check_gguf_architecture",
    "check_gguf_destination",
    "check_model_path",
    "commands",
    "events",
    "method_named",
    "model_label",
    "parse_listen",
    "prune",
    "wire",
    "parse_targets",
    "recovery_events",
    "session_files",
    *_LAZY,
]
