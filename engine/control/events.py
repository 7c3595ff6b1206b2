"""What the engine reports, as frozen values of plain Python types and the plan's own torch-free
values (:class:`PlanStep`), never tensors.

Subscribers (the app, the headless printer, the session journal) receive these from the engine
thread; they must not block it for long.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Self

from ..errors import Message, Part
from ..search.methods import DEFAULT_METHOD
from ..search.plan import PlanStep


class EngineState(StrEnum):
    """Where the engine is: the one mode every reader (the app, the server, a late attacher)
    takes from ``StateChanged``; engine/control/command_table.py says what every command does in
    each."""

    LOADING = "loading"
    RUNNING = "running"
    PAUSED = "paused"  # the search, paused
    WAITING = "waiting"  # guided mode: a proposal waits for the user
    RECOVERING = "recovering"  # LoRA fine-tuning after the search (docs/method.md §10)
    RECOVERY_PAUSED = "recovery_paused"  # the recovery, paused: only its commands apply
    DONE = "done"
    STOPPED = "stopped"  # a Stop ended the run
    ERROR = "error"  # failed; a lingering engine still answers exports and evaluations
    #: The engine thread has returned (always its last event): nothing reads commands any more,
    #: so a reader must not send one and wait for its answer.
    ENDED = "ended"

    @property
    def is_final(self) -> bool:
        """The search is over (a lingering engine still answers), or the engine has ended."""
        return self in (EngineState.DONE, EngineState.STOPPED, EngineState.ERROR, EngineState.ENDED)

    @property
    def is_paused(self) -> bool:
        """Paused, the search or the recovery: the engine waits for a command."""
        return self in (EngineState.PAUSED, EngineState.RECOVERY_PAUSED)


class ActivityKind(StrEnum):
    """What a long task besides the search is, so readers never parse its label (a quit waits
    for an export, not for an evaluation)."""

    LOADING = "loading"
    EXPORT = "export"
    EVALUATION = "evaluation"
    #: a recovery's validation (the first runs before any optimizer step); commands wait for
    #: it as for an optimizer step, so it blocks nothing a user asks for
    VALIDATION = "validation"


@dataclass(frozen=True)
class Event:
    """Base of all events; ``time`` is ``time.monotonic()`` when it was made."""

    time: float = field(default=0.0, kw_only=True)


@dataclass(frozen=True)
class Loaded(Event):
    """The model is loaded, ranked and scored dense; the search is about to start."""

    model: str
    architecture: str
    num_layers: int
    params_dense: int
    params_layers_dense: int
    dense_score: float
    mlp_group: int
    attn_group: int
    group_source: str
    mlp_width: int
    attn_width: int
    order: tuple[str, ...]
    targets: dict[str, float]
    tokens: int
    notes: tuple[str, ...] = ()
    steps: tuple[PlanStep, ...] = ()  # a resumed session's replayed plan steps
    method: str = DEFAULT_METHOD  # the search (docs/method.md §11)


@dataclass(frozen=True)
class StepStarted(Event):
    """Scoring of step ``step`` begins: ``candidates`` ids in canonical order."""

    step: int
    dimension: str
    candidates: tuple[str, ...]
    current_score: float


@dataclass(frozen=True)
class CandidateScored(Event):
    step: int
    dimension: str
    structure: str
    score: float
    delta: float
    params_freed: int
    k: int
    n: int
    rows: int = 0  # calibration rows behind ``score``; below ``total_rows``: a --fast partial score
    total_rows: int = 0


@dataclass(frozen=True)
class Progress(Event):
    """Progress of the current step: candidate ``k`` of ``n``."""

    step: int
    k: int
    n: int
    tokens_per_s: float
    eta_s: float


@dataclass(frozen=True)
class Proposal(Event):
    """Guided mode: the engine proposes ``structure`` and waits for the user."""

    step: int
    structure: str
    score: float


@dataclass(frozen=True)
class StepCommitted(Event):
    """A removal was committed. ``step`` is the plan entry as written to plan.json (the wire and
    the event log write it as :meth:`PlanStep.to_dict`, the plan file's JSON)."""

    step: PlanStep
    score: float
    ratio: float
    ratio_layers: float
    params: int
    seconds: float
    candidates: int
    tokens: int


@dataclass(frozen=True)
class StepUndone(Event):
    index: int
    structure: str
    score: float
    ratio: float


@dataclass(frozen=True)
class DimensionChanged(Event):
    dimension: str | None
    target: float | None
    order: tuple[str, ...]


@dataclass(frozen=True)
class StateChanged(Event):
    """The engine entered ``state`` (on the wire, its value as text)."""

    state: EngineState


@dataclass(frozen=True)
class GuidedChanged(Event):
    """Guided mode is now on (each commit waits for the user) or off; sent at the start of a
    run and after every SetGuided, so every app shows the engine's own flag."""

    guided: bool


@dataclass(frozen=True)
class MemorySample(Event):
    """Process RSS always; per CUDA device (index, allocated, reserved) when there is one."""

    rss_bytes: int
    cuda: tuple[tuple[int, int, int], ...] = ()


class Said:
    """What :class:`Notice` and :class:`Error` share: ``message`` is the engine's words as a
    script reads them; ``parts``, only where they name a setting or a way on, the same message
    in parts (:class:`Message`), for a front end to word its own way (mptui/flags.py)."""

    message: str
    parts: tuple[Part, ...]

    @classmethod
    def of(cls, *pieces: object) -> Self:
        """The event saying ``pieces`` (joined as :meth:`Message.of` joins them)."""
        message = Message.of(*pieces)
        return cls(str(message), message.parts if message.worded else ())  # type: ignore[call-arg]

    @property
    def said(self) -> Message:
        """The message in parts, whichever way it was made."""
        return Message(self.parts) if self.parts else Message.of(self.message)


@dataclass(frozen=True)
class Notice(Said, Event):
    message: str
    parts: tuple[Part, ...] = ()


@dataclass(frozen=True)
class Error(Said, Event):
    message: str
    parts: tuple[Part, ...] = ()


@dataclass(frozen=True)
class Activity(Event):
    """Something long besides the search (a load, an export, an evaluation, a recovery's
    validation): its ``kind``, and ``label`` to show; ``kind`` None (and ``label`` "") when it
    is over.

    ``done``/``total`` count bytes or items where known, else both are 0.
    """

    kind: ActivityKind | None
    label: str = ""
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class Exported(Event):
    """An export was written: a checkpoint folder (``stock`` when it loads in transformers
    without remote code) or, with ``format`` ``gguf``, one GGUF file of ``gguf_type`` with
    ``stand_ins`` zero-weight parts llama.cpp's layer rules need (``stock`` is then False)."""

    path: str
    params: int
    bytes: int
    stock: bool
    seconds: float
    format: str = "safetensors"
    gguf_type: str | None = None
    stand_ins: int = 0


@dataclass(frozen=True)
class Evaluated(Event):
    """Dense and pruned results of one evaluation, at ``steps`` commits (``ratio``); the
    recovered model's too once a recovery has started (else empty)."""

    dense: dict
    pruned: dict
    steps: int
    ratio: float
    recovered: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Finished(Event):
    """The search ended; ``reason`` says why, ``plan`` is the plan file's content."""

    reason: str
    plan: dict
