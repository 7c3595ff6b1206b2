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

from .control import command_table, commands, events, wire
from .control.events import ActivityKind, EngineState
from .control.remote import RemoteEngine, attach
from .control.run_view import MEMORY_HISTORY, CandidateRow, CurvePoint, RecoveryView, RunView
from .control.server import EngineServer, parse_listen
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
    Message,
    OutOfMemory,
    Part,
    Term,
    UnsupportedModel,
)
from .names import check_model_path, model_label
from .output.eval_request import EvalRequest
from .output.gguf_rules import GGUF_TYPES, check_gguf_architecture, check_gguf_destination
from .recovery import events as recovery_events
from .recovery.settings import RecoverySettings, parse_targets
from .search.methods import method_named
from .search.run_request import RunRequest
from .search.settings import FAITHFUL_CALIBRATION, CalibrationSpec, PruneSettings
from .search.structures import DIMENSIONS, Structure
from .session import files as session_files

if TYPE_CHECKING:  # the lazy names below, for type checkers (tests/unit/test_api.py)
    from .control.commands import Outcome as Outcome
    from .model.adapters import adapter_for as adapter_for
    from .model.device_failure import device_failed as device_failed
    from .model.device_failure import is_device_failure as is_device_failure
    from .model.device_failure import lost_device_of as lost_device_of
    from .model.facts import check_with_model_files as check_with_model_files
    from .model.loading import load_config as load_config
    from .model.loading import load_model as load_model
    from .model.rebuild import apply_plan as apply_plan
    from .model.rebuild import rebuild_pruned as rebuild_pruned
    from .output.comparison import Comparison as Comparison
    from .output.comparison import Scores as Scores
    from .output.comparison import SpeedRequest as SpeedRequest
    from .output.comparison import compare_sessions as compare_sessions
    from .output.comparison import ratio_text as ratio_text
    from .output.comparison import sibling_comparison as sibling_comparison
    from .output.comparison import task_text as task_text
    from .output.comparison import tokens_per_second as tokens_per_second
    from .output.evaluate import check_tasks as check_tasks
    from .output.evaluate import evaluate as evaluate
    from .output.evaluate import flat_scores as flat_scores
    from .output.export import check_destination as check_destination
    from .output.export import describe_export as describe_export
    from .output.export import export_model as export_model
    from .output.export_phase import write_model as write_model
    from .output.gguf_export import describe_gguf as describe_gguf
    from .output.gguf_export import export_gguf as export_gguf
    from .recovery.data import calibration_text as calibration_text
    from .recovery.folder import RecoveryFolder as RecoveryFolder
    from .recovery.folder import recovered_model as recovered_model
    from .recovery.run import check_recovery as check_recovery
    from .recovery.run import prepare_recovery as prepare_recovery
    from .recovery.source import RecoverySource as RecoverySource
    from .runner import Engine as Engine
    from .runner import Subscriber
    from .search.calibration import load_documents as load_documents
    from .search.calibration import split_documents as split_documents
    from .search.calibration import tokenize_chunks as tokenize_chunks
    from .search.plan import LayerRow as LayerRow
    from .search.plan import Plan as Plan
    from .search.plan import PlanStep as PlanStep
    from .search.plan import layer_rows as layer_rows
    from .search.plan import read_plan_file as read_plan_file
    from .search.scoring import Scorer as Scorer
    from .search.setup import preflight as preflight
    from .session.check import check_session as check_session
    from .session.disk import write_bytes_atomic as write_bytes_atomic
    from .session.disk import write_json_atomic as write_json_atomic
    from .session.folder import SessionFolder as SessionFolder
    from .session.folder import SessionRecorder as SessionRecorder
    from .session.summary import write_summary as write_summary
    from .workers.follower import follow as follow
    from .workers.follower import on_replica_device as on_replica_device
    from .workers.team import Team as Team
    from .workers.team import pin_gpus as pin_gpus

#: Names that need torch, by the module that defines them; loaded on first access.
_LAZY: dict[str, str] = {
    "Engine": "runner",
    "Outcome": "control.commands",
    "preflight": "search.setup",
    "check_with_model_files": "model.facts",
    "load_documents": "search.calibration",
    "split_documents": "search.calibration",
    "tokenize_chunks": "search.calibration",
    "SessionFolder": "session.folder",
    "SessionRecorder": "session.folder",
    "check_session": "session.check",
    "describe_export": "output.export",
    "export_model": "output.export",
    "check_destination": "output.export",
    "export_gguf": "output.gguf_export",
    "write_model": "output.export_phase",
    "describe_gguf": "output.gguf_export",
    "apply_plan": "model.rebuild",
    "rebuild_pruned": "model.rebuild",
    "Comparison": "output.comparison",
    "Scores": "output.comparison",
    "compare_sessions": "output.comparison",
    "sibling_comparison": "output.comparison",
    "SpeedRequest": "output.comparison",
    "tokens_per_second": "output.comparison",
    "ratio_text": "output.comparison",
    "task_text": "output.comparison",
    "check_tasks": "output.evaluate",
    "evaluate": "output.evaluate",
    "flat_scores": "output.evaluate",
    "load_model": "model.loading",
    "load_config": "model.loading",
    "write_summary": "session.summary",
    "adapter_for": "model.adapters",
    "Scorer": "search.scoring",
    "Plan": "search.plan",
    "PlanStep": "search.plan",
    "LayerRow": "search.plan",
    "layer_rows": "search.plan",
    "read_plan_file": "search.plan",
    "write_json_atomic": "session.disk",
    "write_bytes_atomic": "session.disk",
    "device_failed": "model.device_failure",
    "is_device_failure": "model.device_failure",
    "lost_device_of": "model.device_failure",
    "Team": "workers.team",
    "pin_gpus": "workers.team",
    "follow": "workers.follower",
    "on_replica_device": "workers.follower",
    "RecoveryFolder": "recovery.folder",
    "RecoverySource": "recovery.source",
    "recovered_model": "recovery.folder",
    "check_recovery": "recovery.run",
    "prepare_recovery": "recovery.run",
    "calibration_text": "recovery.data",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__package__}.{_LAZY[name]}")
    value = getattr(module, name)
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
    "Message",
    "OutOfMemory",
    "Part",
    "PruneSettings",
    "RemoteEngine",
    "RecoverySettings",
    "RunRequest",
    "RecoveryView",
    "RunView",
    "Structure",
    "Term",
    "UnsupportedModel",
    "attach",
    "check_gguf_architecture",
    "check_gguf_destination",
    "check_model_path",
    "command_table",
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
