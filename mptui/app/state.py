"""What the screen shows: the engine's :class:`RunView` of the run, and its presentation
(labels, ranking, table rows); plain Python, no Textual.

The app applies every event here (cheap) and repaints from this state at a bounded rate, so a
burst of events costs one repaint and a test can check the state without a terminal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mptui.engine.api import (
    MEMORY_HISTORY,
    CandidateRow,
    EngineState,
    LayerRow,
    RecoveryView,
    RunView,
    layer_rows,
)
from mptui.flags import cli_words

STATE_LABELS = {
    EngineState.LOADING: "LOADING",
    EngineState.RUNNING: "RUNNING",
    EngineState.PAUSED: "PAUSED",
    EngineState.WAITING: "WAITING FOR YOU",
    EngineState.RECOVERING: "RECOVERING",
    EngineState.RECOVERY_PAUSED: "PAUSED recovery",
    EngineState.DONE: "DONE",
    EngineState.STOPPED: "STOPPED",
    EngineState.ERROR: "ERROR",
}


@dataclass
class RunState(RunView):
    """The engine's :class:`RunView` (every rule about the events lives there), and how the
    app presents it."""

    link: str = ""  # attached to a served run: to whom, or that the run has ended

    @property
    def error(self) -> str | None:
        """The line the run failed with, in the CLI's words (as the headless run prints it)."""
        return cli_words(self.failed) if self.failed is not None else None

    @property
    def layers(self) -> list[LayerRow]:
        """The *Removed per layer* rows: the plan's own rows of the steps seen so far."""
        return layer_rows(self.num_layers, self.mlp_width, self.attn_width, self.steps)

    @property
    def state_label(self) -> str:
        """The state, in capitals; once the engine has ended, the state it ended in: how the
        run ended is what the user needs."""
        label = STATE_LABELS[self.ended_as or self.state]
        recovery = self.recovery
        if self.recovering and recovery is not None:
            return f"{label} step {recovery.step}/{recovery.steps}"
        return label

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


#: The override prompt's examples before the model is known.
GENERIC_EXAMPLES = "L<layer>.attn, L<layer>.mlp, L<layer>.mlp-<channels>, L<layer>.heads-<channels>"


def override_examples(state: RunState) -> str:
    """Structure ids the override prompt offers as examples: this model's own (a layer that
    still has the block, its group sizes), so that one can be typed as shown. A fixed list
    (``L12.attn`` on a model of 8 layers, ``mlp-1024`` where the group is 46) reads as valid
    and is refused."""
    rows = state.layers
    if not rows:
        return GENERIC_EXAMPLES
    attn = [row.layer for row in rows if not row.attn_removed]
    mlp = [row.layer for row in rows if not row.mlp_removed]
    examples = []
    if attn:
        examples.append(f"L{attn[-1]}.attn")
    if mlp:
        examples.append(f"L{mlp[len(mlp) // 2]}.mlp")
    narrowable = [i for i in mlp if rows[i].mlp_width > state.mlp_group > 0]
    if narrowable:
        examples.append(f"L{narrowable[0]}.mlp-{state.mlp_group}")
    narrowable = [i for i in attn if rows[i].attn_width > state.attn_group > 0]
    if narrowable:
        examples.append(f"L{narrowable[0]}.heads-{state.attn_group}")
    return ", ".join(examples) or GENERIC_EXAMPLES


def display_name(model: str | Path) -> str:
    """The model's own name (:func:`~mptui.engine.model.loading.model_label`): a hub id as it is, a
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


__all__ = [
    "MEMORY_HISTORY",
    "STATE_LABELS",
    "RecoveryView",
    "RunState",
    "display_name",
    "evaluation_rows",
    "override_examples",
]
