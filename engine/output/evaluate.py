"""Zero-shot scores with the current lm-eval, and a rolling perplexity, on a live model.

The tasks of docs/method.md §5 are asked for by name (their datasets must be reachable); local
tasks come from ``include_path`` folders of YAML and JSONL, which is how everything is tested
offline. Each task reports ``acc_norm`` where it has one, else ``acc``, with lm-eval's standard
error of it; the average is the plain mean.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..errors import BadInput, Cancelled, setting
from ..model.adapters import adapter_for
from ..search.calibration import split_documents, tokenize_chunks
from ..search.scoring import Scorer
from .eval_request import ZERO_SHOT_TASKS, EvalRequest

#: lm-eval's request methods, each called once with all the requests of its type.
_REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")

Progress = Callable[[int, int], None]
#: lm-eval computes no standard error at all with 0. Accuracies (a mean over documents) get the
#: closed form whatever this is; only metrics lm-eval bootstraps (perplexity-like ones, which we
#: do not report) pay for these resamples, far fewer than lm-eval's default of 100,000.
STDERR_BOOTSTRAP_ITERS = 1000


def evaluate(
    model,
    tokenizer,
    request: EvalRequest,
    cancelled: Callable[[], bool] | None = None,
    progress: Progress | None = None,
) -> dict:
    """``{"zero_shot": ..., "perplexity": ...}``, each present when asked for.

    Before every lm-eval batch and every row of the perplexity text ``cancelled`` is asked
    (when it says yes, :class:`Cancelled` is raised) and ``progress(done, total)`` told how far
    the evaluation is: lm-eval requests answered, then perplexity rows scored, in one count
    (the text's rows are in the total from the start, so the share never goes back, and the
    perplexity part, which lm-eval does not see, is not a silent stretch at the end). It is told
    ``(total, total)`` when all are done. Either may raise to stop the evaluation there.
    """
    request.check()
    result: dict = {}
    chunks = None
    if request.text:  # tokenized first: its rows are part of the total from the start
        text = Path(request.text).read_text(encoding="utf-8")
        chunks = perplexity_rows(tokenizer, text, request.seqlen)
    rows = len(chunks) if chunks is not None else 0
    answered = 0  # lm-eval's requests, all of them once it is done

    def zero_shot_progress(done: int, total: int) -> None:
        nonlocal answered
        answered = total
        if progress is not None:
            progress(done, total + rows)

    def rows_progress(done: int, total: int) -> None:
        if progress is not None:
            progress(answered + done, answered + total)

    if request.tasks:
        include = Path(request.include_path) if request.include_path else None
        result["zero_shot"] = zero_shot(
            model, tokenizer, request.tasks, include_path=include, limit=request.limit,
            batch_size=request.batch_size, cancelled=cancelled, progress=zero_shot_progress,
        )  # fmt: skip
    if chunks is not None:
        result["perplexity"] = rows_perplexity(model, chunks, cancelled, rows_progress)
    return result


def flat_scores(results: dict) -> dict:
    """``{"piqa acc_norm (dense)": 0.78, ...}`` from ``{"dense": ..., "pruned": ...}`` (and
    ``"recovered"`` once a session was fine-tuned, docs/method.md §10)."""
    flat = {}
    for which in ("dense", "pruned", "recovered"):
        part = results.get(which) or {}
        for task, score in part.get("zero_shot", {}).get("tasks", {}).items():
            flat[f"{task} {score['metric']} ({which})"] = round(score["value"], 4)
        if "zero_shot" in part:
            flat[f"average ({which})"] = round(part["zero_shot"]["average"], 4)
        if "perplexity" in part:
            flat[f"perplexity ({which})"] = round(part["perplexity"], 4)
    return flat


def check_tasks(tasks: Sequence[str], include_path: str | Path | None = None):
    """lm-eval's task index for ``tasks`` (built once per process); raises :class:`BadInput`
    for a task it does not know, before any model is loaded.

    Indexing lm-eval's own tasks reads thousands of files (bench/RESULTS.md has the time), so
    where ``include_path`` defines every task asked for (the demo's task, a team's private
    ones) only that folder is indexed."""
    path = str(include_path) if include_path else None
    if path is not None:
        local = _task_manager(path, with_lm_eval_tasks=False)
        if all(task in local.all_tasks for task in tasks):
            return local
    manager = _task_manager(path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise BadInput(
            f"unknown lm-eval task(s): {', '.join(unknown)}; give ",
            setting("include_path"),
            " for local tasks",
        )
    return manager


@functools.lru_cache(maxsize=8)
def _task_manager(include_path: str | None, with_lm_eval_tasks: bool = True):
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm-eval").setLevel(logging.WARNING)
    return TaskManager(include_path=include_path, include_defaults=with_lm_eval_tasks)


def zero_shot(
    model,
    tokenizer,
    tasks: Sequence[str] = ZERO_SHOT_TASKS,
    *,
    include_path: Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    cancelled: Callable[[], bool] | None = None,
    progress: Progress | None = None,
) -> dict:
    """``{"tasks": {name: {"metric": m, "value": v, "stderr": e}}, "average": mean,
    "lm_eval": version}``, ``e`` lm-eval's standard error of ``v`` (None where it gives none: a
    single document); ``cancelled`` and ``progress`` as for :func:`evaluate`."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager = check_tasks(tasks, include_path)
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    watch = _BatchWatch(cancelled, progress)
    watch.attach(wrapped)
    try:
        output = lm_eval.simple_evaluate(
            model=wrapped, tasks=list(tasks), num_fewshot=0, limit=limit,
            task_manager=manager, log_samples=False, bootstrap_iters=STDERR_BOOTSTRAP_ITERS,
        )  # fmt: skip
    except Cancelled:
        raise
    except Exception as error:  # datasets that cannot be reached raise many types
        if error is watch.raised:  # the caller's own callback: not lm-eval's failure
            raise
        raise BadInput(f"lm-eval could not run {', '.join(tasks)}: {error}") from error
    scores = {}
    for task in tasks:
        metrics = output["results"][task]
        name = "acc_norm" if "acc_norm,none" in metrics else "acc"
        stderr = metrics.get(f"{name}_stderr,none")  # "N/A" where lm-eval has none
        known = isinstance(stderr, (int, float)) and stderr == stderr  # NaN fails JSON
        value = float(metrics[f"{name},none"])
        scores[task] = {"metric": name, "value": value, "stderr": float(stderr) if known else None}
    average = sum(s["value"] for s in scores.values()) / len(scores)
    return {"tasks": scores, "average": average, "lm_eval": lm_eval.__version__}


class _BatchWatch:
    """One hook before every lm-eval batch: asks ``cancelled`` (a 7B evaluation takes long,
    and a dropped SSH link must not keep the GPU busy until it ends) and tells ``progress``
    how many requests are answered so far.

    It lives on the one HFLM instance, nothing global: lm-eval calls each request method
    (:data:`_REQUEST_TYPES`) once with all requests of that type, which gives the total; the
    model's ``cache_hook`` is told of every request answered, which gives the count; and
    ``_model_call`` / ``_model_generate`` run every batch. A rolling-loglikelihood request is
    counted once all its windows are scored, so those count at the end of their call.
    """

    def __init__(self, cancelled: Callable[[], bool] | None, progress: Progress | None):
        self.cancelled, self.progress = cancelled, progress
        self.done = self.total = 0
        self.raised: BaseException | None = None

    def attach(self, lm) -> None:
        from lm_eval.api.model import CacheHook

        watch = self

        class Counting(CacheHook):
            def add_partial(self, attr, req, res) -> None:
                watch.done += 1
                super().add_partial(attr, req, res)

        lm.cache_hook = Counting(None)
        for name in ("_model_call", "_model_generate"):
            setattr(lm, name, self._before_each_batch(getattr(lm, name)))
        for name in _REQUEST_TYPES:
            setattr(lm, name, self._counting_requests(getattr(lm, name)))

    def _before_each_batch(self, batch_call: Callable) -> Callable:
        def call(*args, **kwargs):
            self.check()
            return batch_call(*args, **kwargs)

        return call

    def _counting_requests(self, method: Callable) -> Callable:
        def call(requests, *args, **kwargs):
            start = self.done
            self.total += len(requests)
            self.check()
            # Our progress replaces lm-eval's own bars, which would draw over ours (or the app).
            answers = method(requests, *args, **{"disable_tqdm": True, **kwargs})
            self.done = start + len(requests)  # exact, whatever the hook saw
            self.check()
            return answers

        return call

    def check(self) -> None:
        try:
            if self.cancelled is not None and self.cancelled():
                raise Cancelled("evaluation cancelled")
            if self.progress is not None:
                self.progress(min(self.done, self.total), self.total)
        except BaseException as error:
            self.raised = error
            raise


def rolling_perplexity(
    model,
    tokenizer,
    text: str,
    seqlen: int,
    cancelled: Callable[[], bool] | None = None,
    progress: Progress | None = None,
) -> float:
    """The protocol of docs/method.md §5: documents joined by a blank line, tokenized once,
    non-overlapping ``seqlen`` rows, tail dropped, batch 1, the same score as calibration;
    ``cancelled`` and ``progress`` as for :func:`rows_perplexity`."""
    return rows_perplexity(model, perplexity_rows(tokenizer, text, seqlen), cancelled, progress)


def perplexity_rows(tokenizer, text: str, seqlen: int) -> torch.Tensor:
    """The rows :func:`rolling_perplexity` scores, ``[rows, seqlen]`` token ids."""
    return tokenize_chunks(tokenizer, split_documents(text), seqlen, label="the evaluation text")


def rows_perplexity(
    model,
    chunks: torch.Tensor,
    cancelled: Callable[[], bool] | None = None,
    progress: Progress | None = None,
) -> float:
    """Perplexity of ``model`` on ``chunks`` at batch 1, one row at a time so that a Stop is
    seen and ``progress(done, total)`` told (in rows) between two rows: on a 7B with a long
    held-out text this part alone takes minutes. Row by row at batch 1 is exactly
    :meth:`Scorer.score`'s own arithmetic (each row's mean NLL, then their mean)."""

    def interrupt() -> None:
        if cancelled is not None and cancelled():
            raise Cancelled("evaluation cancelled")

    scorer = Scorer(
        model, adapter_for(model), chunks, batch_size=1, prefix_cache=False, interrupt=interrupt
    )
    total = len(chunks)
    nll = []
    for row in range(total):
        interrupt()
        if progress is not None:
            progress(row, total)
        nll.append(scorer.row_nll(0, range(row, row + 1)))
    if progress is not None:
        progress(total, total)
    return math.exp(torch.cat(nll).mean().item())
