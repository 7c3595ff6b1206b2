"""What the screen shows, folded from engine events; plain Python, no Textual.

The app applies every event here (cheap) and repaints from this state at a bounded rate, so a
burst of events costs one repaint and a test can check the state without a terminal.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from mptui.engine.api import LayerRow, PlanStep, layer_rows
from mptui.engine.api import events as ev
from mptui.engine.api import recovery_events as rev

STATE_LABELS = {
    "loading": "LOADING",
    "running": "RUNNING",
    "paused": "PAUSED",
    "waiting": "WAITING FOR YOU",
    "done": "DONE",
    "stopped": "STOPPED",
    "error": "ERROR",
}

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
class RunState:
    model: str = ""
    architecture: str = ""
    state: str = "loading"
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
    proposal: str | None = None
    memory: deque = field(default_factory=lambda: deque(maxlen=MEMORY_HISTORY))
    messages: list[str] = field(default_factory=list)
    error: str | None = None
    finished: str | None = None
    notes: tuple[str, ...] = ()
    activity: str = ""
    activity_progress: tuple[int, int] = (0, 0)
    evaluation: ev.Evaluated | None = None
    exported: ev.Exported | None = None
    link: str = ""  # attached to a served run: to whom, or that the run has ended
    recovery: RecoveryState | None = None  # once a recovery has started

    @property
    def layers(self) -> list[LayerRow]:
        """The *Removed per layer* rows: the plan's own rows of the steps seen so far."""
        return layer_rows(self.num_layers, self.mlp_width, self.attn_width, self.steps)

    @property
    def state_label(self) -> str:
        recovery = self.recovery
        if recovery is not None and self.state == "running":
            return f"RECOVERING step {recovery.step}/{recovery.steps}"
        if recovery is not None and self.state == "paused":
            return f"PAUSED recovery step {recovery.step}/{recovery.steps}"
        return STATE_LABELS.get(self.state, self.state.upper())

    def ranked(self) -> list[CandidateRow]:
        """Candidates by score, lowest (best) first, a NaN or inf last; ties keep canonical
        (arrival) order. With --fast, the fully scored come before the partly scored (their
        scores are on fewer rows, so the two do not compare)."""
        return sorted(
            self.candidates.values(),
            key=lambda row: (
                not row.fully_scored,
                not math.isfinite(row.score),
                row.score if math.isfinite(row.score) else 0,
            ),
        )

    def apply(self, event: ev.Event) -> None:
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(event)

    # --- handlers, one per event type -------------------------------------------------------
    def _on_Loaded(self, event: ev.Loaded) -> None:
        self.model, self.architecture = display_name(event.model), event.architecture
        self.dense_score = self.score = event.dense_score
        self.params_dense = event.params_dense
        self.order, self.targets = event.order, dict(event.targets)
        self.target = max(event.targets.values())
        self.mlp_width, self.attn_width = event.mlp_width, event.attn_width
        self.num_layers = event.num_layers
        self.curve = [CurvePoint(0.0, event.dense_score, "dense", "engine")]
        self.notes = event.notes
        for data in event.steps:  # a resumed session shows what it had already removed
            step = PlanStep.from_dict(data)
            self.steps.append(step)
            self.ratio, self.ratio_layers, self.score = step.ratio, step.ratio_layers, step.score
            self.curve.append(CurvePoint(step.ratio, step.score, step.dimension, step.chosen_by))

    def _on_StateChanged(self, event: ev.StateChanged) -> None:
        self.state = event.state
        if event.state not in ("waiting", "paused"):  # a paused proposal is still there
            self.proposal = None

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
        self.proposal = event.structure

    def _on_StepCommitted(self, event: ev.StepCommitted) -> None:
        self.proposal = None
        step = PlanStep.from_dict(event.step)
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
        self.messages.append(f"undid {event.structure}")
        self.last_commit_layer = None
        self.candidates_step = 0  # the scores shown are of a model that no longer exists

    def _on_MemorySample(self, event: ev.MemorySample) -> None:
        self.memory.append(event)

    def _on_Notice(self, event: ev.Notice) -> None:
        self.messages.append(event.message)

    def _on_Error(self, event: ev.Error) -> None:
        self.error = event.message

    def _on_Finished(self, event: ev.Finished) -> None:
        self.finished = event.reason

    def _on_Activity(self, event: ev.Activity) -> None:
        self.activity, self.activity_progress = event.label, (event.done, event.total)

    def _on_Evaluated(self, event: ev.Evaluated) -> None:
        self.evaluation = event

    def _on_Exported(self, event: ev.Exported) -> None:
        self.exported = event

    def _on_RecoveryStarted(self, event: rev.RecoveryStarted) -> None:
        self.recovery = RecoveryState(step=event.step, steps=event.steps)
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


@dataclass
class RecoveryState:
    """The Recovery pane's data: loss per step, validation perplexity, rate and ETA."""

    step: int = 0
    steps: int = 0
    lr: float = 0.0
    tokens_per_s: float = 0.0
    eta_s: float = 0.0
    loss: list[tuple[int, float]] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)
    finished: str | None = None


def display_name(model: str | Path) -> str:
    """The model's own name (:func:`~mptui.engine.loading.model_label`): a hub id as it is, a
    local folder by its name, never a bare ``model`` (the demo's ``demo/model`` is ``demo``)."""
    from mptui.engine.api import model_label

    return model_label(model)


def evaluation_rows(
    dense: dict, pruned: dict, recovered: dict | None = None
) -> list[tuple[str, ...]]:
    """``(what, dense, pruned, change)`` per task, the average and the perplexity, as text;
    with ``recovered`` results, ``(what, dense, pruned, recovered, change)`` where the change
    is the recovered model's against the dense one."""
    after = recovered or pruned
    rows = []
    dense_tasks = dense.get("zero_shot", {}).get("tasks", {})
    for task, score in dense_tasks.items():
        values = [part["zero_shot"]["tasks"][task]["value"] for part in (pruned, after)]
        rows.append(_row(f"{task} ({score['metric']})", score["value"], values, "{:.4f}"))
    if "zero_shot" in dense:
        values = [part["zero_shot"]["average"] for part in (pruned, after)]
        rows.append(_row("average", dense["zero_shot"]["average"], values, "{:.4f}"))
    if "perplexity" in dense:
        values = [part["perplexity"] for part in (pruned, after)]
        rows.append(_row("perplexity", dense["perplexity"], values, "{:.3f}"))
    return [row if recovered else (row[0], row[1], row[2], row[4]) for row in rows]


def _row(name: str, before: float, afters: list[float], number: str) -> tuple[str, ...]:
    pruned, recovered = afters
    return (
        name, number.format(before), number.format(pruned), number.format(recovered),
        f"{recovered - before:+.4g}",
    )  # fmt: skip
