"""Sessions side by side, on equal terms: what ``mptui compare`` prints and ``mptui report``
draws.

Every session is scored on the same calibration rows (the plans' own final perplexities, which
the search computed on those rows), the same held-out text and the same lm-eval tasks; the dense
model is scored once. Torch-free at import: the collection loads models inside its functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .plan import Plan


@dataclass(frozen=True)
class Scores:
    """One model's row of the comparison."""

    name: str  # "dense", or the session folder's name
    method: str  # "dense" for the dense model, else the plan's settings["method"]
    params: int
    ratio: float  # 1 - params / params_dense
    calibration_ppl: float
    held_out_ppl: float | None = None  # with --eval-text
    tasks: dict[str, float] = field(default_factory=dict)  # lm-eval task -> its main metric


@dataclass(frozen=True)
class ComparedSession:
    """A session in the comparison: where it is, its plan (steps, settings, layer map) and
    its row."""

    path: Path
    plan: Plan
    scores: Scores


@dataclass(frozen=True)
class Comparison:
    """The dense row once, then one row per session, in the order given."""

    model: str  # the dense model's name_or_path
    calibration: str  # the calibration the sessions share, in words
    dense: Scores
    sessions: list[ComparedSession]
    eval_text: str | None = None
    tasks: tuple[str, ...] = ()
    #: Sessions of different models or calibrations compared anyway (``--force``), in words.
    forced: tuple[str, ...] = ()
