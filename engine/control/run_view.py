"""The run as its events tell it: the one reducer every reader folds events through.

The app draws from a :class:`RunView`, the server asks one whether the search is over and
whether anything is under way, and a client attaching mid-run is sent what one holds
(:meth:`RunView.replay_tail`, after the server's log of the run's history). So every rule about
what an event means (a proposal stands while waiting or paused, a step's table stays until the
next step's first score, a recovery is under way) is written here once. Plain Python and
torch-free: ``mptui attach`` folds events without loading a model stack.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..recovery import events as rev
from ..search.plan import PlanStep
from . import events as ev
from .events import EngineState

#: Memory samples kept (the app's memory history, and what a late attacher is sent).
MEMORY_HISTORY = 60


@dataclass
class CandidateRow:
    structure: str
    score: float
    delta: float
    params_freed: int
    rows: int = 0  # calibration rows behind the score
    total_rows: int = 0

    @property
    def fully_scored(self) -> bool:
        """Scored on every row; with --fast, a candidate ruled out early is not."""
        return self.rows >= self.total_rows


@dataclass
class CurvePoint:
    ratio: float
    score: float
    dimension: str
    chosen_by: str


@dataclass
class RecoveryView:
    """The recovery's progress: loss per step, validation perplexity, rate and ETA."""

    step: int = 0
    steps: int = 0
    lr: float = 0.0
    tokens_per_s: float = 0.0
    eta_s: float = 0.0
    loss: list[tuple[int, float]] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)
    finished: str | None = None
    #: ``(done, total)`` held-out examples while a validation runs (its ``Activity``), else None.
    validating: tuple[int, int] | None = None
    first_step: int = 0  # where this recovery started (more than 0 when resumed)


@dataclass
class RunView:
    """Everything the events of one run say, folded; ``apply`` takes them in order."""

    model: str = ""
    architecture: str = ""
    method: str = ""
    state: EngineState = EngineState.LOADING
    #: Once the engine thread has returned (``state`` is ENDED): the state it ended in (done,
    #: stopped, error), which says how the run ended where ENDED alone does not.
    ended_as: EngineState | None = None
    guided: bool = False
    dimension: str | None = None
    order: tuple[str, ...] = ()
    step: int = 0
    ratio: float = 0.0
    ratio_layers: float = 0.0
    target: float = 0.0
    targets: dict[str, float] = field(default_factory=dict)
    score: float | None = None
    dense_score: float | None = None
    params_dense: int = 0
    num_layers: int = 0
    mlp_width: int = 0
    attn_width: int = 0
    mlp_group: int = 0  # channels per MLP-width structure
    attn_group: int = 0  # query channels per attention-width structure
    progress: tuple[int, int] = (0, 0)
    eta_s: float = 0.0
    tokens_per_s: float = 0.0
    candidates: dict[str, CandidateRow] = field(default_factory=dict)
    candidates_step: int = 0
    candidates_dimension: str | None = None
    steps: list[PlanStep] = field(default_factory=list)  # committed and not undone, in order
    last_commit_layer: int | None = None
    curve: list[CurvePoint] = field(default_factory=list)
    dimension_marks: list[tuple[float, str]] = field(default_factory=list)
    proposal: ev.Proposal | None = None  # stands while waiting, or paused from waiting
    memory: deque = field(default_factory=lambda: deque(maxlen=MEMORY_HISTORY))
    notice: ev.Notice | None = None  # the latest
    failed: ev.Error | None = None  # what the run failed with
    ended: ev.Finished | None = None
    notes: tuple[str, ...] = ()
    activity: ev.Activity | None = None  # a load, an export or an evaluation under way
    evaluation: ev.Evaluated | None = None
    exported: ev.Exported | None = None
    recovery: RecoveryView | None = None  # once a recovery has started

    # --- what the run is doing ------------------------------------------------------------
    @property
    def finished(self) -> str | None:
        """Why the search ended (``done``, ``stopped``, ``error``), or None while it runs."""
        return self.ended.reason if self.ended is not None else None

    @property
    def search_over(self) -> bool:
        return self.ended is not None

    @property
    def paused(self) -> bool:
        return self.state.is_paused

    @property
    def recovering(self) -> bool:
        """A recovery is under way (preparing, training or paused)."""
        return self.state in (EngineState.RECOVERING, EngineState.RECOVERY_PAUSED)

    @property
    def busy(self) -> bool:
        """Something a user started is under way: an export, an evaluation or a recovery."""
        return self.activity is not None or self.recovering

    @property
    def exporting(self) -> bool:
        """An export is being written (quitting now would leave half a checkpoint)."""
        return self.activity is not None and self.activity.kind is ev.ActivityKind.EXPORT

    @property
    def evaluating(self) -> bool:
        """An evaluation is under way (quitting or stopping now drops it: nothing is kept)."""
        return self.activity is not None and self.activity.kind is ev.ActivityKind.EVALUATION

    @property
    def smallest_share(self) -> float | None:
        """What the smallest structure of the latest scored step removes, as a share of the
        dense model (the ratio's unit); None before any candidate is scored."""
        if not self.candidates or not self.params_dense:
            return None
        return min(row.params_freed for row in self.candidates.values()) / self.params_dense

    @property
    def overshoot(self) -> str | None:
        """``target 0.10% reached at 1.23%: the smallest structure removes 1.23%`` once the
        search is done past a target below what any one structure removes, else None: a ratio
        far past the target must not read as a bug, and no setting gets nearer."""
        smallest = self.smallest_share
        if self.finished != "done" or smallest is None or self.ratio <= self.target:
            return None
        if self.target >= smallest:
            return None
        return (
            f"target {self.target:.2%} reached at {self.ratio:.2%}: "
            f"the smallest structure removes {smallest:.2%}"
        )

    # --- folding ------------------------------------------------------------------------------
    def apply(self, event: ev.Event) -> None:
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(event)

    def replay_tail(self) -> list[ev.Event]:
        """Events that bring a fresh view folded over the run's history (every ``Loaded``,
        ``DimensionChanged``, commit, undo and recovery event, with the latest ``StepStarted``
        and ``Progress`` in their places) to this one: the candidates table as it shows now,
        the memory history, then the modes (activity, guided, state, end, a standing
        proposal), in an order this fold keeps."""
        events: list[ev.Event] = []
        rows = list(self.candidates.values())
        for k, row in enumerate(rows, start=1):
            events.append(
                ev.CandidateScored(
                    self.candidates_step, self.candidates_dimension or "", row.structure,
                    row.score, row.delta, row.params_freed, k, len(rows), row.rows,
                    row.total_rows,
                )
            )  # fmt: skip
        events += self.memory
        if self.notice is not None:
            events.append(self.notice)
        if self.failed is not None:
            events.append(self.failed)
        if self.activity is not None:
            events.append(self.activity)
        events.append(ev.GuidedChanged(self.guided))
        if self.ended_as is not None:  # the state the run ended in, then that it has ended
            events.append(ev.StateChanged(self.ended_as))
        events.append(ev.StateChanged(self.state))
        if self.ended is not None:
            events.append(self.ended)
        if self.proposal is not None:  # after the state it stands in
            events.append(self.proposal)
        return events

    # --- handlers, one per event type -------------------------------------------------------
    def _on_Loaded(self, event: ev.Loaded) -> None:
        self.model, self.architecture, self.method = event.model, event.architecture, event.method
        self.dense_score = self.score = event.dense_score
        self.params_dense = event.params_dense
        self.order, self.targets = event.order, dict(event.targets)
        self.target = max(event.targets.values())
        self.mlp_width, self.attn_width = event.mlp_width, event.attn_width
        self.mlp_group, self.attn_group = event.mlp_group, event.attn_group
        self.num_layers = event.num_layers
        self.curve = [CurvePoint(0.0, event.dense_score, "dense", "engine")]
        self.notes = event.notes
        self.step = len(event.steps)  # until a step starts: what a resumed session removed
        for step in event.steps:  # a resumed session shows what it had already removed
            self.steps.append(step)
            self.ratio, self.ratio_layers, self.score = step.ratio, step.ratio_layers, step.score
            self.curve.append(CurvePoint(step.ratio, step.score, step.dimension, step.chosen_by))

    def _on_StateChanged(self, event: ev.StateChanged) -> None:
        state = EngineState(event.state)
        if state is EngineState.ENDED and self.ended_as is None:
            self.ended_as = self.state
        self.state = state
        if self.state not in (EngineState.WAITING, EngineState.PAUSED):
            self.proposal = None  # a proposal stands while it waits (or is paused)

    def _on_GuidedChanged(self, event: ev.GuidedChanged) -> None:
        self.guided = event.guided

    def _on_DimensionChanged(self, event: ev.DimensionChanged) -> None:
        self.dimension, self.order = event.dimension, event.order
        if event.dimension is not None:
            self.dimension_marks.append((self.ratio, event.dimension))

    def _on_StepStarted(self, event: ev.StepStarted) -> None:
        self.step = event.step
        self.progress = (0, len(event.candidates))
        self.score = event.current_score

    def _on_CandidateScored(self, event: ev.CandidateScored) -> None:
        if event.step != self.candidates_step or event.dimension != self.candidates_dimension:
            # the last step's table stays until the next step's first score arrives
            self.candidates = {}
            self.candidates_step, self.candidates_dimension = event.step, event.dimension
        self.candidates[event.structure] = CandidateRow(
            event.structure, event.score, event.delta, event.params_freed, event.rows,
            event.total_rows,
        )  # fmt: skip

    def _on_Progress(self, event: ev.Progress) -> None:
        self.progress = (event.k, event.n)
        self.eta_s, self.tokens_per_s = event.eta_s, event.tokens_per_s

    def _on_Proposal(self, event: ev.Proposal) -> None:
        self.proposal = event

    def _on_StepCommitted(self, event: ev.StepCommitted) -> None:
        self.proposal = None
        step = event.step
        self.steps.append(step)
        self.last_commit_layer = step.structure.layer
        self.ratio, self.ratio_layers, self.score = event.ratio, event.ratio_layers, event.score
        self.curve.append(CurvePoint(event.ratio, event.score, step.dimension, step.chosen_by))

    def _on_StepUndone(self, event: ev.StepUndone) -> None:
        self.proposal = None
        if len(self.curve) > 1:
            self.curve.pop()
        self.ratio, self.score = event.ratio, event.score
        if self.steps and self.steps[-1].index == event.index:
            self.steps.pop()
        self.last_commit_layer = None
        self.candidates_step = 0  # the scores shown are of a model that no longer exists

    def _on_MemorySample(self, event: ev.MemorySample) -> None:
        self.memory.append(event)

    def _on_Notice(self, event: ev.Notice) -> None:
        self.notice = event

    def _on_Error(self, event: ev.Error) -> None:
        self.failed = event

    def _on_Finished(self, event: ev.Finished) -> None:
        self.ended = event

    def _on_Activity(self, event: ev.Activity) -> None:
        self.activity = event if event.kind is not None else None
        if self.recovery is not None:  # the recovery pane shows its validation's share too
            validating = event.kind is ev.ActivityKind.VALIDATION
            self.recovery.validating = (event.done, event.total) if validating else None

    def _on_Evaluated(self, event: ev.Evaluated) -> None:
        self.evaluation = event

    def _on_Exported(self, event: ev.Exported) -> None:
        self.exported = event

    def _on_RecoveryStarted(self, event: rev.RecoveryStarted) -> None:
        self.recovery = RecoveryView(step=event.step, steps=event.steps, first_step=event.step)
        for record in event.history:  # a resumed recovery shows its curves so far
            if "loss" in record:
                self.recovery.loss.append((record["step"], record["loss"]))
            else:
                self.recovery.validation.append((record["step"], record["val_perplexity"]))

    def _on_RecoveryStep(self, event: rev.RecoveryStep) -> None:
        recovery = self.recovery
        recovery.step, recovery.lr = event.step, event.lr
        recovery.tokens_per_s, recovery.eta_s = event.tokens_per_s, event.eta_s
        recovery.loss.append((event.step, event.loss))

    def _on_RecoveryValidated(self, event: rev.RecoveryValidated) -> None:
        self.recovery.validation.append((event.step, event.perplexity))

    def _on_RecoveryFinished(self, event: rev.RecoveryFinished) -> None:
        self.recovery.finished = event.reason


#: What the server logs in order for a late attacher; the rest it takes from the view.
HISTORY: tuple[type[ev.Event], ...] = (
    ev.Loaded,
    ev.DimensionChanged,
    ev.StepCommitted,
    ev.StepUndone,
    rev.RecoveryStarted,
    rev.RecoveryStep,
    rev.RecoveryValidated,
    rev.RecoveryFinished,
)
#: History of which only the latest counts, kept in its place among the rest.
LATEST_IN_PLACE: tuple[type[ev.Event], ...] = (ev.StepStarted, ev.Progress)


__all__ = [
    "HISTORY",
    "LATEST_IN_PLACE",
    "MEMORY_HISTORY",
    "CandidateRow",
    "CurvePoint",
    "RecoveryView",
    "RunView",
]
