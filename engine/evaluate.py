"""Zero-shot scores with the current lm-eval, and a rolling perplexity, on a live model.

The tasks of docs/method.md §5 are asked for by name (their datasets must be reachable); local
tasks come from ``include_path`` folders of YAML and JSONL, which is how everything is tested
offline. Each task reports ``acc_norm`` where it has one, else ``acc``; the average is the
plain mean.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from .adapters import adapter_for
from .calibration import split_documents, tokenize_chunks
from .errors import BadInput, Cancelled
from .eval_request import ZERO_SHOT_TASKS, EvalRequest
from .scoring import Scorer

#: lm-eval's request methods, each called once with all the requests of its type.
_REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")

Progress = Callable[[int, int], None]


def evaluate(
    model,
    tokenizer,
    request: EvalRequest,
    cancelled: Callable[[], bool] | None = None,
    progress: Progress | None = None,
) -> dict:
    """``{"zero_shot": ..., "perplexity": ...}``, each present when asked for.

    Before every lm-eval batch ``cancelled`` is asked (when it says yes, :class:`Cancelled` is
    raised) and ``progress(done, total)`` told how many lm-eval requests are answered; it is
    told ``(total, total)`` when they all are. Either may raise to stop the evaluation there.
    """
    request.check()
    result: dict = {}
    if request.tasks:
        include = Path(request.include_path) if request.include_path else None
        result["zero_shot"] = zero_shot(
            model, tokenizer, request.tasks, include_path=include, limit=request.limit,
            batch_size=request.batch_size, cancelled=cancelled, progress=progress,
        )  # fmt: skip
    if request.text:
        text = Path(request.text).read_text(encoding="utf-8")
        result["perplexity"] = rolling_perplexity(model, tokenizer, text, request.seqlen)
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
            f"unknown lm-eval task(s): {', '.join(unknown)}; give --include-path for local tasks"
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
    """``{"tasks": {name: {"metric": m, "value": v}}, "average": mean, "lm_eval": version}``;
    ``cancelled`` and ``progress`` as for :func:`evaluate`."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager = check_tasks(tasks, include_path)
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    watch = _BatchWatch(cancelled, progress)
    watch.attach(wrapped)
    try:
        output = lm_eval.simple_evaluate(
            model=wrapped, tasks=list(tasks), num_fewshot=0, limit=limit,
            task_manager=manager, log_samples=False, bootstrap_iters=0,
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
        scores[task] = {"metric": name, "value": float(metrics[f"{name},none"])}
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


def rolling_perplexity(model, tokenizer, text: str, seqlen: int) -> float:
    """The protocol of docs/method.md §5: documents joined by a blank line, tokenized once,
    non-overlapping ``seqlen`` rows, tail dropped, batch 1, the same score as calibration."""
    chunks = tokenize_chunks(tokenizer, split_documents(text), seqlen, label="the evaluation text")
    return Scorer(model, adapter_for(model), chunks, batch_size=1, prefix_cache=False).score()
