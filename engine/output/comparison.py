"""Sessions side by side, on equal terms: what ``mptui compare`` prints and ``mptui report``
draws.

Every session is scored on the same calibration rows (the plans' own final perplexities, which
the search computed on those rows), the same held-out text and the same lm-eval tasks; the dense
model is scored once. With a :class:`SpeedRequest` (``--speed``) each row also gets its
generation speed in llama.cpp (through a temporary GGUF export) and in transformers: what the
pruning bought, beside what it cost. Torch-free at import: the collection loads models inside
its functions.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BadInput, EngineError, setting
from ..names import model_label
from ..search.methods import DEFAULT_METHOD
from ..search.plan import Plan, as_plan, read_plan_file
from ..session.files import (
    CHANNEL_ORDER,
    JOURNAL,
    LOCK,
    PLAN,
    RECOVERY,
    RECOVERY_SETTINGS,
    SETTINGS,
)
from ..session.lock import lock_holder
from .eval_request import EvalRequest
from .gguf_rules import FORMAT_GGUF, GGUF_TYPES
from .speed import Speed

COMPARISON_FORMAT = "mptui.comparison/1"
#: ``counts(label, unit)``: a ``(done, total)`` reporter for one long part (the CLI's
#: ``ProgressLines``), told of shards loaded and lm-eval requests answered.
Counts = Callable[[str, str], Callable[[int, int], None]]


@dataclass(frozen=True)
class Recovery:
    """A session's LoRA recovery, as its export's model card states it
    (:meth:`~mptui.engine.recovery.folder.RecoveryFolder.card_info`): the saved step, and the
    validation perplexity before training and at that step. Those are measured on the
    recovery's own validation rows, not the calibration rows, so they are told apart from the
    calibration perplexity. With an evaluation the recovered model (the adapter merged, what
    ``mptui export`` writes) is scored on the same text and tasks as every other row."""

    step: int
    steps: int  # the steps the recovery was asked for
    perplexity: float | None  # validation perplexity at ``step`` (None: not validated there)
    pruned_perplexity: float | None  # validation perplexity at step 0, before any training
    data: str  # what it was fine-tuned on
    held_out_ppl: float | None = None  # with --eval-text: the recovered model's
    tasks: dict[str, float] = field(default_factory=dict)  # with --tasks: the recovered model's
    task_stderr: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Scores:
    """One model's row of the comparison."""

    name: str  # "dense", or the part of the session's path that tells it from the others
    method: str  # "dense" for the dense model, else the plan's settings["method"]
    params: int
    ratio: float  # 1 - params / params_dense: the ratio reached
    calibration_ppl: float
    held_out_ppl: float | None = None  # with --eval-text
    tasks: dict[str, float] = field(default_factory=dict)  # lm-eval task -> its main metric
    speed: ModelSpeed | None = None  # with --speed
    #: lm-eval's standard error of each task's score (``acc_norm_stderr``): a score of a few
    #: hundred documents is uncertain in its second decimal, which a reader must see.
    #: None where lm-eval gives none (a task of one document).
    task_stderr: dict[str, float | None] = field(default_factory=dict)
    #: The ratio the search was asked for (None: the dense model, or a --block-count target).
    #: A search stops at the first step that reaches it, so the ratio reached can be well above
    #: (SLEB removes whole layers), or below when it was stopped early.
    target_ratio: float | None = None
    recovery: Recovery | None = None  # once the session was fine-tuned (mptui recover)


@dataclass(frozen=True)
class SpeedRequest:
    """What ``--speed`` measures: greedy generation of ``new_tokens`` tokens after a prompt of
    ``prompt_tokens`` tokens (:data:`SPEED_TEXT`), the median of ``repeats`` runs. Serving a
    model is these two phases, and pruning speeds them up differently."""

    prompt_tokens: int = 64
    new_tokens: int = 32
    repeats: int = 3
    #: The GGUF llama.cpp runs; None: the weights' half precision, f16 for float32 weights
    #: (a float32 GGUF is not what anyone serves).
    gguf_type: str | None = None

    def check(self) -> None:
        """One line of :class:`BadInput` before any model loads."""
        for option, value in (
            (setting("speed.repeats"), self.repeats), ("prompt tokens", self.prompt_tokens),
            ("new tokens", self.new_tokens),
        ):  # fmt: skip
            if value < 1:
                raise BadInput(option, f" must be at least 1 (got {value})")
        if self.gguf_type is not None and self.gguf_type not in GGUF_TYPES:
            raise BadInput(
                setting("speed.gguf_type"),
                f" {self.gguf_type!r}: choose one of {', '.join(GGUF_TYPES)}",
            )

    def words(self) -> str:
        runs = "one run" if self.repeats == 1 else f"median of {self.repeats} runs"
        return (
            f"greedy, {self.new_tokens} new tokens after a {self.prompt_tokens}-token prompt, "
            f"{runs}"
        )


@dataclass(frozen=True)
class ModelSpeed:
    """One row's generation speed (``--speed``), in tokens per second."""

    transformers: Speed
    transformers_on: str  # "float32 on cpu": how transformers ran it
    llama_cpp: Speed | None = None  # None: see llama_cpp_na
    llama_cpp_na: str | None = None  # why llama.cpp has no number, in words
    gguf_type: str | None = None  # the GGUF llama.cpp ran
    threads: int = 1  # llama.cpp's CPU threads (torch's own count, for a fair comparison)


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
    speed: SpeedRequest | None = None  # with --speed

    def columns(self) -> tuple[str, ...]:
        """The table's header: the target ratio only where a session reached another one, the
        recovered perplexity only once a session recovered, held-out perplexity, the tasks and
        the generation speeds only when they were asked for."""
        target = ("target",) if self.shows_target() else ()
        recovered = ("recovery val ppl",) if self.recovered() else ()
        held_out = ("held-out ppl",) if self.eval_text else ()
        speed = ("llama.cpp tok/s", "transformers tok/s") if self.speed else ()
        return (
            "name", "method", "params", "ratio", *target, "calib ppl", *recovered, *held_out,
            *self.tasks, *speed,
        )  # fmt: skip

    def shows_target(self) -> bool:
        """Whether some session reached another ratio than it was asked for (at the table's
        precision): then the target is shown beside the ratio reached."""
        return any(
            s.target_ratio is not None and ratio_text(s.target_ratio) != ratio_text(s.ratio)
            for s in self.all_scores()
        )

    def recovered(self) -> list[ComparedSession]:
        """The sessions that were fine-tuned after pruning."""
        return [session for session in self.sessions if session.scores.recovery is not None]

    def rows(self) -> list[tuple[str, ...]]:
        """The dense row, then each session's, as text under :meth:`columns`."""
        return [self._cells(scores) for scores in self.all_scores()]

    def all_scores(self) -> list[Scores]:
        return [self.dense, *(session.scores for session in self.sessions)]

    def _cells(self, scores: Scores) -> tuple[str, ...]:
        cells = [scores.name, scores.method, f"{scores.params:,}", ratio_text(scores.ratio)]
        if self.shows_target():
            target = scores.target_ratio
            cells.append(ratio_text(target) if target is not None else "—")
        cells.append(f"{scores.calibration_ppl:.3f}")
        recovery = scores.recovery
        if self.recovered():
            after = recovery.perplexity if recovery else None
            cells.append(f"{after:.3f}" if after is not None else "—")
        if self.eval_text:
            after = recovery.held_out_ppl if recovery else None
            shown = [f"{v:.3f}" for v in (scores.held_out_ppl, after) if v is not None]
            cells.append(" → ".join(shown) or "—")
        for task in self.tasks:
            shown = [task_text(scores.tasks, scores.task_stderr, task)]
            if recovery and task in recovery.tasks:
                shown.append(task_text(recovery.tasks, recovery.task_stderr, task))
            cells.append(" → ".join(shown))
        if self.speed:
            speed, speedups = scores.speed, self.speedups(scores)
            for engine in ("llama_cpp", "transformers"):
                measured = getattr(speed, engine) if speed else None
                if measured is None:
                    cells.append("n/a")
                    continue
                cell = tokens_per_second(measured.generate_tps)
                if scores is not self.dense and speedups.get(engine) is not None:
                    cell += f" ({speedups[engine]:.2f}×)"
                cells.append(cell)
        return tuple(cells)

    def speedups(self, scores: Scores) -> dict[str, float | None]:
        """``scores``' generation speed over the dense model's, per engine (None where either
        has no number)."""
        speedups: dict[str, float | None] = {}
        for engine in ("llama_cpp", "transformers"):
            mine = getattr(scores.speed, engine) if scores.speed else None
            dense = getattr(self.dense.speed, engine) if self.dense.speed else None
            speedups[engine] = mine.generate_tps / dense.generate_tps if mine and dense else None
        return speedups

    def notes(self) -> list[str]:
        """The lines under the table: :meth:`table_notes`, then :meth:`speed_notes`."""
        return self.table_notes() + self.speed_notes()

    def table_notes(self) -> list[str]:
        """What the target, ``±`` and ``→`` mean, where the table has them, and each recovery
        in words."""
        lines = []
        if self.shows_target():
            lines.append("ratio: the share of parameters removed; target: what was asked for")
        if any(s.task_stderr.get(t) is not None for s in self.all_scores() for t in self.tasks):
            lines.append("tasks: score ± lm-eval's standard error")
        lines += [
            recovery_line(s.scores.name, recovery)
            for s in self.sessions
            if (recovery := s.scores.recovery) is not None
        ]
        if self.recovered() and (self.eval_text or self.tasks):
            lines.append("A → B: the pruned model's score, then the recovered model's")
        return lines

    def speed_notes(self, legend: bool = True) -> list[str]:
        """How the speeds were measured, and why a row has no llama.cpp number, in lines;
        ``legend`` explains the table's ``(N.NN×)``."""
        if not self.speed:
            return []
        rows = [scores for scores in self.all_scores() if scores.speed]
        ggufs = _distinct(s.speed.gguf_type for s in rows if s.speed and s.speed.gguf_type)
        threads = _distinct(str(s.speed.threads) for s in rows if s.speed and s.speed.llama_cpp)
        torch_on = _distinct(s.speed.transformers_on for s in rows if s.speed)
        plural = "" if threads == "1" else "s"
        llama = f"{ggufs} on {threads} CPU thread{plural}" if ggufs and threads else "n/a"
        lines = [
            f"speed: generation tokens/s, {self.speed.words()}"
            + ("; (N.NN×): speed-up over dense" if legend else ""),
            f"speed: llama.cpp ran a temporary GGUF {llama}; transformers ran {torch_on}",
        ]
        lines += [
            f"llama.cpp n/a for {s.name}: {s.speed.llama_cpp_na}"
            for s in rows
            if s.speed and s.speed.llama_cpp_na
        ]
        return lines

    def to_dict(self) -> dict:
        """What ``mptui compare --json`` writes (each session's plan stays in its folder).
        With ``--speed`` each row's ``speed`` has both engines' tokens per second and its
        ``speedup`` over dense; without, there is no ``speed`` key at all."""
        written = {
            "format": COMPARISON_FORMAT,
            "model": self.model,
            "calibration": self.calibration,
            "eval_text": self.eval_text,
            "tasks": list(self.tasks),
            "forced": list(self.forced),
            "dense": self._scores_dict(self.dense),
            "sessions": [
                {"path": str(session.path), "scores": self._scores_dict(session.scores)}
                for session in self.sessions
            ],
        }
        if self.speed:
            written["speed"] = asdict(self.speed)
        return written

    def _scores_dict(self, scores: Scores) -> dict:
        row = asdict(scores)
        if row["recovery"] is None:
            del row["recovery"]
        if row["speed"] is None:
            del row["speed"]
        else:
            row["speed"]["speedup"] = self.speedups(scores)
        return row


def tokens_per_second(value: float) -> str:
    """``1,234.5``: one decimal, for the slow models as much as the tiny ones."""
    return f"{value:,.1f}"


def ratio_text(value: float) -> str:
    """``25.64%``: the table's precision for a pruning ratio."""
    return f"{value:.2%}"


def task_text(scores: dict[str, float], stderrs: dict[str, float | None], task: str) -> str:
    """``0.8350 ± 0.0118``, the score alone where lm-eval gave no standard error, ``—`` where
    the row has no score."""
    if task not in scores:
        return "—"
    stderr = stderrs.get(task)
    return f"{scores[task]:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")


def recovery_line(name: str, recovery: Recovery) -> str:
    """One recovered session in words: how far it trained, on what, and what it changed."""
    before, after = recovery.pruned_perplexity, recovery.perplexity
    change = " → ".join(f"{value:.3f}" for value in (before, after) if value is not None)
    return (
        f"recovered: {name}, LoRA step {recovery.step} of {recovery.steps} on "
        f"{recovery.data}; validation perplexity {change or 'not measured'} on the "
        "recovery's own validation rows (not the calibration rows)"
    )


def _distinct(values) -> str:
    return ", ".join(dict.fromkeys(values))


# --- reading and checking sessions, before any model is loaded ----------------------------------
def read_session(path: Path) -> Plan:
    """The plan of a session that has ended and removed something; else one line of
    :class:`BadInput` naming the folder."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"session '{path}' does not exist")
    _check_not_damaged(path)
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


def _check_not_damaged(path: Path) -> None:
    """A session file that is there but is no file (a folder put in its place, a socket) is
    damage, to be named as such: it is not "no plan" nor "not a session", and reading it would
    end in a traceback."""
    for name in (SETTINGS, PLAN, JOURNAL, LOCK):
        file = path / name
        if file.exists() and not file.is_file():
            what = "a folder" if file.is_dir() else "not a regular file"
            raise BadInput(f"session '{path}' is damaged: {file} is {what}, not a file")


def read_recovery(path: Path) -> Recovery | None:
    """``path``'s saved recovery (None: it was never fine-tuned, or nothing was saved yet).

    Torch is imported only for a session that has a recovery (its checkpoint holds the saved
    step), so comparing plans alone stays quick. A damaged recovery is one line of
    :class:`BadInput` naming its file."""
    if not (Path(path) / RECOVERY / RECOVERY_SETTINGS).is_file():
        return None
    from ..recovery.folder import RecoveryFolder

    info = RecoveryFolder(Path(path)).card_info()
    if info is None:
        return None
    settings = info["settings"]
    return Recovery(
        step=info["step"], steps=settings["steps"], perplexity=info["perplexity"],
        pruned_perplexity=info["pruned_perplexity"], data=str(settings["data"]),
    )  # fmt: skip


def session_names(paths: Sequence[Path]) -> list[str]:
    """Each session as the part of its path that tells it from the others: the path below the
    deepest folder holding them all (``a/multipruner`` and ``b/multipruner``, where the folder
    names alone are the same), so the table, the legend and the headings can be told apart.
    Sessions side by side in one folder keep their folder names."""
    absolute = [Path(os.path.abspath(path)) for path in paths]
    if not absolute:
        return []
    common = Path(os.path.commonpath([path.parent for path in absolute]))
    return [str(path.relative_to(common)) for path in absolute]


def target_of(plan: Plan) -> float | None:
    """The ratio the search was asked for; None where a block count was its target."""
    if plan.settings.get("block_count") is not None:
        return None
    target = plan.settings.get("target_ratio")
    return float(target) if isinstance(target, (int, float)) else None


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
    sessions: Sequence[tuple[Path, Plan]],
    forced: Sequence[str] = (),
    recoveries: Sequence[Recovery | None] | None = None,
) -> Comparison:
    """The table the plans alone give: the dense row from the first plan (its dense score), and
    each session's parameters, ratio and calibration perplexity from its plan's last step. That
    step's score is the search's own perplexity of the final model on the calibration rows, so
    no model is loaded and every session is measured on the same rows. ``recoveries`` (one per
    session, see :func:`read_recovery`) adds what each recovery measured."""
    first = sessions[0][1]
    dense = Scores("dense", "dense", first.model.params_dense, 0.0, first.dense_score)
    recoveries = list(recoveries) if recoveries is not None else [None] * len(sessions)
    names = session_names([path for path, _ in sessions])
    compared = []
    for (path, plan), name, recovery in zip(sessions, names, recoveries, strict=True):
        last = plan.steps[-1]
        method = plan.settings.get("method", DEFAULT_METHOD)  # older plans: MultiPruner's
        scores = Scores(
            name, method, last.params, last.ratio, last.score, target_ratio=target_of(plan),
            recovery=recovery,
        )  # fmt: skip
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
    speed: SpeedRequest | None = None,
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
    ``speed`` adds every row's generation speed (:func:`measure_speed`) from the same loads; a
    session that recovered is measured as it exports, recovered, and with ``evaluation`` its
    recovered model is scored too (:class:`Recovery`).
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
        raise BadInput(f"{forced[0]}; ", setting("force"), " compares them anyway")
    recoveries = [read_recovery(path) for path, _plan in sessions]
    comparison = plan_comparison(sessions, forced, recoveries)
    if evaluation is None and speed is None:
        return comparison
    if speed is not None:
        speed.check()
    if evaluation is not None:
        evaluation.check()
        if evaluation.tasks:
            from .evaluate import check_tasks

            check_tasks(evaluation.tasks, evaluation.include_path)
    return evaluated(comparison, evaluation, dtype, device, progress, counts, speed)


def evaluated(
    comparison: Comparison,
    evaluation: EvalRequest | None,
    dtype: str | None,
    device: str | None,
    progress: Callable[[str], None] | None,
    counts: Counts | None,
    speed: SpeedRequest | None = None,
) -> Comparison:
    """``comparison`` with the held-out perplexity and task scores (``evaluation``) and the
    generation speed (``speed``) of every row filled in: one load per session, the dense model
    measured from the first load, before its plan is applied."""
    say = progress or (lambda line: None)
    dense: dict = {}
    dense_speed: list[ModelSpeed] = []
    sessions = []
    for index, session in enumerate(comparison.sessions):
        plan, name = session.plan, session.scores.name
        label = model_label(plan.model.name_or_path)
        count = f"{index + 1} of {len(comparison.sessions)}"
        say(f"{name} ({session.scores.method}, {count}): loading {label}, re-applying its plan")

        def measure_dense(model, tokenizer, plan: Plan = plan) -> None:
            if evaluation is not None:
                say("evaluating the dense model (once, for every session)")
                dense.update(_evaluate(model, tokenizer, evaluation, "the dense model", counts))
            if speed is not None:
                say("measuring the dense model's speed (once, for every session)")
                dense_plan = dataclasses.replace(plan, steps=[])
                dense_speed.append(
                    measure_speed(model, tokenizer, dense_plan, "dense", speed, say, counts)
                )

        scores = _measure_rebuilt(
            session, evaluation, speed, dtype, device, counts,
            measure_dense if index == 0 else None, say,
        )  # fmt: skip
        sessions.append(dataclasses.replace(session, scores=scores))
    dense_scores = _with_results(comparison.dense, dense) if evaluation else comparison.dense
    return dataclasses.replace(
        comparison,
        dense=dataclasses.replace(dense_scores, speed=dense_speed[0] if dense_speed else None),
        sessions=sessions,
        eval_text=evaluation.text if evaluation else None,
        tasks=evaluation.tasks if evaluation else (),
        speed=speed,
    )


def _measure_rebuilt(
    session: ComparedSession,
    evaluation: EvalRequest | None,
    speed: SpeedRequest | None,
    dtype: str | None,
    device: str | None,
    counts: Counts | None,
    before_pruning: Callable | None,
    say: Callable[[str], None],
) -> Scores:
    """One session's row: its pruned model rebuilt, evaluated, timed, and let go before the
    next is loaded."""
    from ..model.rebuild import rebuild_pruned

    label = model_label(session.plan.model.name_or_path)
    name = session.scores.name
    model, tokenizer = rebuild_pruned(
        session.plan,
        session.path / CHANNEL_ORDER,
        dtype=dtype,
        device=device,
        on_shard=counts(f"loading {label}", "shards") if counts else None,
        before_pruning=before_pruning,
    )
    scores = session.scores
    if evaluation is not None:
        say(f"evaluating {name}")
        results = _evaluate(model, tokenizer, evaluation, name, counts)
        scores = _with_results(scores, results)
    served = model
    if scores.recovery is not None:
        from ..recovery.folder import recovered_model

        # After the pruned model's evaluation: merging a recovery changes the model in place.
        # What is scored and timed from here is what ``mptui export`` writes.
        served = recovered_model(model, session.path) or model
        if evaluation is not None:
            say(f"evaluating {name}, recovered")
            results = _evaluate(served, tokenizer, evaluation, f"{name}, recovered", counts)
            recovered = _with_results(scores, results)
            scores = dataclasses.replace(
                scores,
                recovery=dataclasses.replace(
                    scores.recovery, held_out_ppl=recovered.held_out_ppl, tasks=recovered.tasks,
                    task_stderr=recovered.task_stderr,
                ),
            )  # fmt: skip
    if speed is not None:
        scores = dataclasses.replace(
            scores, speed=measure_speed(served, tokenizer, session.plan, name, speed, say, counts)
        )
    return scores


def _evaluate(model, tokenizer, evaluation: EvalRequest, name: str, counts: Counts | None):
    from .evaluate import evaluate

    reporter = counts(f"evaluating {name}", "requests") if counts else None
    return evaluate(model, tokenizer, evaluation, progress=reporter)


# --- speed (--speed) ----------------------------------------------------------------------------
#: The prompt every row is timed on, repeated to length. Speed depends on how many tokens there
#: are, not on what they say; a fixed text gives every row of one tokenizer the same ids and
#: needs no calibration file (which may have moved, or be a hub dataset).
SPEED_TEXT = (
    "Pruning removes whole attention heads, MLP channels and layers from a language model, so "
    "that the smaller model reads fewer weights for every token it generates. The question is "
    "how much faster it is, and how much of its quality it keeps."
)


class _NoLlamaCpp(Exception):
    """Why a row has no llama.cpp number, in words (never a traceback)."""


def speed_prompt(tokenizer, tokens: int) -> list[int]:
    """The first ``tokens`` ids of :data:`SPEED_TEXT`, repeated as often as it takes (with the
    tokenizer's own BOS, if it adds one)."""
    text = SPEED_TEXT
    for _ in range(tokens):
        ids = list(tokenizer(text)["input_ids"])
        if len(ids) >= tokens:
            return ids[:tokens]
        text += " " + SPEED_TEXT
    raise BadInput(
        setting("speed"), f": the tokenizer makes fewer than {tokens} tokens of the prompt"
    )


def measure_speed(
    model,
    tokenizer,
    plan: Plan,
    name: str,
    request: SpeedRequest,
    say: Callable[[str], None],
    counts: Counts | None = None,
) -> ModelSpeed:
    """``model``'s generation speed in transformers (where it is, as it is) and in llama.cpp
    (exported to a temporary GGUF, deleted afterwards). llama.cpp runs on as many CPU threads as
    torch does. A model llama.cpp cannot run (its family has no GGUF, llama-cpp-python is not
    installed, the file cannot be written) gets a reason instead of a number."""
    import torch

    from .speed import transformers_speed

    prompt = speed_prompt(tokenizer, request.prompt_tokens)
    context = getattr(model.config, "max_position_embeddings", None)
    if context and request.prompt_tokens + request.new_tokens > context:
        raise BadInput(
            setting("speed"),
            f": a {request.prompt_tokens}-token prompt and {request.new_tokens} new tokens do "
            f"not fit {name}'s context of {context} tokens",
        )
    parameter = next(model.parameters())
    on = f"{str(parameter.dtype).removeprefix('torch.')} on {parameter.device.type}"
    say(f"{name}: timing transformers ({on}, {request.words()})")
    transformers = transformers_speed(model, prompt, request.new_tokens, repeats=request.repeats)
    gguf_type = request.gguf_type or {torch.bfloat16: "bf16"}.get(parameter.dtype, "f16")
    threads = torch.get_num_threads()
    try:
        llama_cpp = _llama_cpp_speed(
            model, tokenizer, plan, name, prompt, request, gguf_type, threads, say, counts
        )
    except _NoLlamaCpp as reason:
        say(f"{name}: llama.cpp n/a: {reason}")
        return ModelSpeed(transformers, on, llama_cpp_na=str(reason), threads=threads)
    return ModelSpeed(transformers, on, llama_cpp, gguf_type=gguf_type, threads=threads)


def _llama_cpp_speed(
    model, tokenizer, plan: Plan, name: str, prompt: list[int], request: SpeedRequest,
    gguf_type: str, threads: int, say: Callable[[str], None], counts: Counts | None,
) -> Speed:  # fmt: skip
    if importlib.util.find_spec("llama_cpp") is None:
        raise _NoLlamaCpp("llama-cpp-python is not installed (pip install llama-cpp-python)")
    from .gguf_export import export_gguf
    from .speed import llama_cpp_speed

    with tempfile.TemporaryDirectory(prefix="mptui-speed-") as folder:
        path = Path(folder) / f"{name}.gguf"
        try:
            say(f"{name}: writing a temporary {gguf_type} GGUF for llama.cpp")
            export_gguf(
                model, tokenizer, plan, path, gguf_type=gguf_type,
                progress=counts(f"writing {name}'s GGUF", "bytes") if counts else None,
            )  # fmt: skip
        except EngineError as error:
            raise _NoLlamaCpp(_gguf_reason(error)) from None
        except OSError as error:
            raise _NoLlamaCpp(f"its GGUF could not be written ({error})") from None
        plural = "" if threads == 1 else "s"
        say(f"{name}: timing llama.cpp ({gguf_type}, {threads} CPU thread{plural})")
        try:
            return llama_cpp_speed(
                path, prompt, request.new_tokens, repeats=request.repeats, threads=threads
            )
        except (ImportError, OSError, RuntimeError, ValueError) as error:
            raise _NoLlamaCpp(f"llama.cpp could not run its GGUF ({error})") from None


def _gguf_reason(error: Exception) -> str:
    """The exporter's refusal without what only ``mptui export`` needs to hear (the option's
    name, the other format)."""
    return str(error).removeprefix(f"{FORMAT_GGUF}: ").split("; GGUF export supports")[0]


def _with_results(scores: Scores, results: dict) -> Scores:
    """``scores`` with what :func:`~mptui.engine.output.evaluate.evaluate` measured."""
    tasks = results.get("zero_shot", {}).get("tasks", {})
    return dataclasses.replace(
        scores,
        held_out_ppl=results.get("perplexity"),
        tasks={task: score["value"] for task, score in tasks.items()},
        task_stderr={task: _finite(score.get("stderr")) for task, score in tasks.items()},
    )


def _finite(value: object) -> float | None:
    """A standard error as a number, or None (lm-eval writes ``"N/A"`` where it has none)."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


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
    if not others:
        return None
    sessions = [own, *others]
    return plan_comparison(sessions, recoveries=[_recovery_or_none(p) for p, _ in sessions])


def _recovery_or_none(path: Path) -> Recovery | None:
    """The app's table is a glance: a damaged recovery leaves its column empty there (``mptui
    compare`` names the damage)."""
    try:
        return read_recovery(path)
    except BadInput:
        return None
