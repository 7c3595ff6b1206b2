"""What a pruning run is asked to do, as plain values: a run can be saved with its session,
sent to other workers and built by the CLI before anything heavy loads (importing this module
imports no torch; a test checks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .plan import PlanStep
from .settings import PruneSettings


@dataclass(frozen=True)
class RunRequest:
    """What to prune and how; plain values, so it can be saved with a session."""

    model: str
    settings: PruneSettings
    dtype: str | None = None
    device: str | None = None
    device_map: str | None = None
    cache_dir: Path | None = None
    cache_budget_bytes: int | None = None
    resume_steps: tuple[PlanStep, ...] = field(default_factory=tuple)
    order_file: Path | None = None  # the session's L1 channel order (read, or written once)
