"""Sessions side by side, on equal terms: what ``mptui compare`` prints and ``mptui report``
draws.

Every session is scored on the same calibration rows (the plans' own final perplexities, which
the search computed on those rows), the same held-out text and the same lm-eval tasks; the dense
model is scored once. Torch-free at import: the collection loads models inside its functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import BadInput
from .eval_request import EvalRequest
from .methods import DEFAULT_METHOD
from .names import model_label
from .plan import Plan, as_plan, read_plan_file
from .session_files import CHANNEL_ORDER, PLAN, SETTINGS
from .session_lock import lock_holder

COMPARISON_FORMAT = "mptui.comparison/1"
#: ``counts(label, unit)``: a ``(done, total)`` reporter for one long part (the CLI's
#: ``ProgressLines``), told of shards loaded and lm-eval requests answered.
Counts = Callable[[str, str], Callable[[int, int], None]]


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

    def columns(self) -> tuple[str, ...]:
        """The table's header: held-out perplexity and the tasks only when they were asked for."""
        held_out = ("held-out ppl",) if self.eval_text else ()
        return ("name", "method", "params", "ratio", "calib ppl", *held_out, *self.tasks)

    def rows(self) -> list[tuple[str, ...]]:
        """The dense row, then each session's, as text under :meth:`columns`."""
        return [self._cells(scores) for scores in self.all_scores()]

    def all_scores(self) -> list[Scores]:
        return [self.dense, *(session.scores for session in self.sessions)]

    def _cells(self, scores: Scores) -> tuple[str, ...]:
        cells = [
            scores.name, scores.method, f"{scores.params:,}", f"{scores.ratio:.2%}",
            f"{scores.calibration_ppl:.3f}",
        ]  # fmt: skip
        if self.eval_text:
            held_out = scores.held_out_ppl
            cells.append(f"{held_out:.3f}" if held_out is not None else "—")
        cells += [f"{scores.tasks[t]:.4f}" if t in scores.tasks else "—" for t in self.tasks]
        return tuple(cells)

    def to_dict(self) -> dict:
        """What ``mptui compare --json`` writes (each session's plan stays in its folder)."""
        return {
            "format": COMPARISON_FORMAT,
            "model": self.model,
            "calibration": self.calibration,
            "eval_text": self.eval_text,
            "tasks": list(self.tasks),
            "forced": list(self.forced),
            "dense": asdict(self.dense),
            "sessions": [
                {"path": str(session.path), "scores": asdict(session.scores)}
                for session in self.sessions
            ],
        }


# --- reading and checking sessions, before any model is loaded ----------------------------------
def read_session(path: Path) -> Plan:
    """The plan of a session that has ended and removed something; else one line of
    :class:`BadInput` naming the folder."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"session '{path}' does not exist")
    if not (path / SETTINGS).is_file():
        raise BadInput(f"'{path}' is not an mptui session (no {SETTINGS})")
    holder = lock_holder(path)
    if holder:
        raise BadInput(f"session '{path}' is still running ({holder}); compare it once it ends")
    if not (path / PLAN).is_file():
        raise BadInput(f"session '{path}' has no {PLAN}: its search committed nothing")
    plan = read_plan_file(path / PLAN)
    if not plan.steps:
        raise BadInput(f"session '{path}' removed nothing: its plan has no steps")
    return plan


def model_of(plan: Plan) -> dict[str, object]:
    """What makes two sessions sessions of one dense model."""
    model = plan.model
    return {
        "model": model.name_or_path,
        "dense parameters": model.params_dense,
        "architecture": model.architecture,
    }


def calibration_of(plan: Plan) -> dict[str, object]:
    """What decides the calibration rows a plan's perplexities were computed on: the source and
    how it was cut, and faithful mode, which draws the reference's rows instead (§9)."""
    spec = plan.settings.get("calibration") or {}
    rows = {key: spec.get(key) for key in ("source", "nsamples", "seqlen", "seed", "text_field")}
    return {**rows, "faithful": plan.settings.get("faithful")}


def calibration_words(plan: Plan) -> str:
    """``calibration.txt: all documents, rows of 2048 tokens, seed 42``."""
    spec = calibration_of(plan)
    documents = f"{spec['nsamples']} documents" if spec["nsamples"] else "all documents"
    words = f"{spec['source']}: {documents}, rows of {spec['seqlen']} tokens, seed {spec['seed']}"
    if spec["text_field"] not in (None, "text"):
        words += f", field {spec['text_field']}"
    if spec["faithful"]:
        words += f", the {spec['faithful']} reference's rows"
    return words


def differences(first: tuple[Path, Plan], other: tuple[Path, Plan]) -> list[str]:
    """One sentence per way ``other`` cannot be compared with ``first`` on equal terms: another
    dense model, other calibration rows. Empty when they can."""
    sentences = []
    for what, identity in (("model", model_of), ("calibration", calibration_of)):
        mine, theirs = identity(first[1]), identity(other[1])
        keys = [key for key in mine if mine[key] != theirs[key]]
        if keys:
            sentences.append(
                f"the {what} differs: '{first[0]}' has "
                + ", ".join(f"{key} {mine[key]}" for key in keys)
                + f"; '{other[0]}' has "
                + ", ".join(f"{key} {theirs[key]}" for key in keys)
            )
    return sentences


def plan_comparison(
    sessions: Sequence[tuple[Path, Plan]], forced: Sequence[str] = ()
) -> Comparison:
    """The table the plans alone give: the dense row from the first plan (its dense score), and
    each session's parameters, ratio and calibration perplexity from its plan's last step. That
    step's score is the search's own perplexity of the final model on the calibration rows, so
    no model is loaded and every session is measured on the same rows."""
    first = sessions[0][1]
    dense = Scores("dense", "dense", first.model.params_dense, 0.0, first.dense_score)
    compared = []
    for path, plan in sessions:
        last = plan.steps[-1]
        method = plan.settings.get("method", DEFAULT_METHOD)  # older plans: MultiPruner's
        scores = Scores(Path(path).name, method, last.params, last.ratio, last.score)
        compared.append(ComparedSession(Path(path), plan, scores))
    return Comparison(
        first.model.name_or_path, calibration_words(first), dense, compared, forced=tuple(forced)
    )


def compare_sessions(
    paths: Sequence[Path],
    evaluation: EvalRequest | None,
    *,
    force: bool = False,
    dtype: str | None = None,
    device: str | None = None,
    progress: Callable[[str], None] | None = None,
    counts: Counts | None = None,
) -> Comparison:
    """Sessions side by side, in the order given, after the dense model.

    Everything is checked before a model is loaded; each failure is one line of
    :class:`BadInput` naming the folder: a missing folder, one that is not a session, a session
    still running (its lock is held) or with no steps, a folder given twice, and sessions of
    different dense models or calibrations (unless ``force``: then :attr:`Comparison.forced`
    says how they differ). Parameters, ratio and calibration perplexity come from the plans
    (:func:`plan_comparison`); without ``evaluation`` nothing else is done and no model is
    loaded. With it, each session's pruned model is rebuilt (its dense model in its own
    precision unless ``dtype`` says otherwise) and scored on the held-out text and the tasks;
    the first session's dense model is scored before its plan is applied, once for all.
    ``progress`` is told of each part in a line, ``counts`` (see :data:`Counts`) of its steps.
    """
    sessions = [(Path(path), read_session(Path(path))) for path in paths]
    if not sessions:
        raise BadInput("no session to compare")
    seen: set[Path] = set()
    for path, _plan in sessions:
        if path.resolve() in seen:
            raise BadInput(f"session '{path}' is given twice")
        seen.add(path.resolve())
    forced = [sentence for other in sessions[1:] for sentence in differences(sessions[0], other)]
    if forced and not force:
        raise BadInput(f"{forced[0]}; --force compares them anyway")
    comparison = plan_comparison(sessions, forced)
    if evaluation is None:
        return comparison
    evaluation.check()
    if evaluation.tasks:
        from .evaluate import check_tasks

        check_tasks(evaluation.tasks, evaluation.include_path)
    return evaluated(comparison, evaluation, dtype, device, progress, counts)


def evaluated(
    comparison: Comparison,
    evaluation: EvalRequest,
    dtype: str | None,
    device: str | None,
    progress: Callable[[str], None] | None,
    counts: Counts | None,
) -> Comparison:
    """``comparison`` with the held-out perplexity and task scores of every row filled in: one
    load per session, the dense model scored from the first load."""
    say = progress or (lambda line: None)
    dense: dict = {}
    sessions = []
    for index, session in enumerate(comparison.sessions):
        plan, name = session.plan, session.scores.name
        label = model_label(plan.model.name_or_path)
        count = f"{index + 1} of {len(comparison.sessions)}"
        say(f"{name} ({session.scores.method}, {count}): loading {label}, re-applying its plan")

        def score_dense(model, tokenizer) -> None:
            say("evaluating the dense model (once, for every session)")
            dense.update(_evaluate(model, tokenizer, evaluation, "the dense model", counts))

        results = _evaluate_rebuilt(
            session, evaluation, dtype, device, counts, score_dense if index == 0 else None, say
        )
        scores = _with_results(session.scores, results)
        sessions.append(dataclasses.replace(session, scores=scores))
    return dataclasses.replace(
        comparison,
        dense=_with_results(comparison.dense, dense),
        sessions=sessions,
        eval_text=evaluation.text,
        tasks=evaluation.tasks,
    )


def _evaluate_rebuilt(
    session: ComparedSession,
    evaluation: EvalRequest,
    dtype: str | None,
    device: str | None,
    counts: Counts | None,
    before_pruning: Callable | None,
    say: Callable[[str], None],
) -> dict:
    """One session's pruned model, rebuilt, evaluated and let go before the next is loaded."""
    from .rebuild import rebuild_pruned

    label = model_label(session.plan.model.name_or_path)
    model, tokenizer = rebuild_pruned(
        session.plan,
        session.path / CHANNEL_ORDER,
        dtype=dtype,
        device=device,
        on_shard=counts(f"loading {label}", "shards") if counts else None,
        before_pruning=before_pruning,
    )
    say(f"evaluating {session.scores.name}")
    return _evaluate(model, tokenizer, evaluation, session.scores.name, counts)


def _evaluate(model, tokenizer, evaluation: EvalRequest, name: str, counts: Counts | None):
    from .evaluate import evaluate

    reporter = counts(f"evaluating {name}", "requests") if counts else None
    return evaluate(model, tokenizer, evaluation, progress=reporter)


def _with_results(scores: Scores, results: dict) -> Scores:
    """``scores`` with what :func:`~mptui.engine.evaluate.evaluate` measured."""
    tasks = results.get("zero_shot", {}).get("tasks", {})
    return dataclasses.replace(
        scores,
        held_out_ppl=results.get("perplexity"),
        tasks={task: score["value"] for task, score in tasks.items()},
    )


def sibling_comparison(session: Path, plan: Plan | dict) -> Comparison | None:
    """``session`` beside the other sessions in its parent folder that have ended with a plan of
    the same dense model and calibration (folders that are not such sessions are passed over),
    plans only; None when there is no other. What the app's ``c`` shows after the search."""
    session = Path(session)
    own = (session, as_plan(plan))
    others = []
    parent = session.parent
    for folder in sorted(parent.iterdir()) if parent.is_dir() else ():
        if not folder.is_dir() or folder.resolve() == session.resolve():
            continue
        try:
            other = (folder, read_session(folder))
        except BadInput:
            continue
        if not differences(own, other):
            others.append(other)
    return plan_comparison([own, *others]) if others else None
