"""What the recovery phase reports, as plain values (docs/engine.md, "Recovery").

They share the engine's :class:`~mptui.engine.control.events.Event` base, so every subscriber (the
app,
the headless printer, the session's event log) receives them like the search's events.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..control.events import Event


@dataclass(frozen=True)
class RecoveryStarted(Event):
    """Training starts (``step`` > 0: resumed from the session's last save)."""

    step: int
    steps: int
    trainable: int  # adapter parameters
    params: int  # the pruned model's parameters (what an export keeps)
    examples: int
    val_examples: int
    settings: dict
    history: tuple[dict, ...] = ()  # resumed: recovery.jsonl's lines up to ``step``


@dataclass(frozen=True)
class RecoveryStep(Event):
    """One optimizer step done: its mean token loss, the learning rate it used."""

    step: int
    steps: int
    loss: float
    lr: float
    tokens_per_s: float
    eta_s: float
    micro_batch: int
    grad_accum: int


@dataclass(frozen=True)
class RecoveryValidated(Event):
    """Validation perplexity after ``step`` optimizer steps (0: the pruned model)."""

    step: int
    perplexity: float


@dataclass(frozen=True)
class RecoveryFinished(Event):
    """Training ended: ``done``, ``stopped`` (saved, resumable) or ``error``."""

    reason: str
    step: int
    steps: int
