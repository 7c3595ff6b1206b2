"""``mptui eval``: zero-shot scores and a rolling perplexity, for a model or a session.

With ``--session DIR`` the session's plan is re-applied to its dense model, both are scored,
and the results go into the session (``evaluation.json`` and the summary) side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from .cli import _Parser

    parser = _Parser(prog="mptui eval", description=__doc__)
    parser.add_argument("model", nargs="?", help="hub id or model folder (or use --session)")
    parser.add_argument("--session", default=None, help="evaluate a session: dense and pruned")
    parser.add_argument("--tasks", default=None, help="comma-separated lm-eval task names")
    parser.add_argument("--include-path", default=None, help="folder of local task YAML files")
    parser.add_argument("--limit", type=int, default=None, help="documents per task (testing)")
    parser.add_argument("--perplexity", default=None, help="text file for a rolling perplexity")
    parser.add_argument("--seqlen", type=int, default=2048, help="rows of the rolling perplexity")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default=None)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.model and not args.session:
        parser.error("give a MODEL or --session DIR")
    from mptui.engine.errors import EngineError
    from mptui.runs import quiet_libraries

    quiet_libraries()
    try:
        results = run(args)
    except EngineError as error:
        print(f"mptui: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2))
    return 0


def run(args) -> dict:
    from mptui.engine.evaluate import EvalRequest, apply_plan, evaluate, flat_scores
    from mptui.engine.loading import load_model
    from mptui.engine.plan import write_json_atomic
    from mptui.engine.session_folder import SessionFolder
    from mptui.engine.summary import write_summary

    request = EvalRequest.from_options(
        args.tasks, args.perplexity, args.seqlen, include_path=args.include_path,
        limit=args.limit, batch_size=args.batch_size,
    )  # fmt: skip
    request.check()
    if not args.session:
        model, tokenizer = load_model(
            args.model, dtype=args.dtype, device=args.device, on_shard=loading_lines(args.model)
        )
        return evaluate(model, tokenizer, request, progress=ProgressLines("evaluating"))
    folder = SessionFolder(Path(args.session))
    plan = folder.read_plan()
    base = plan["model"]["name_or_path"]
    model, tokenizer = load_model(
        base,
        dtype=args.dtype if args.dtype != "auto" else plan["model"].get("dtype"),
        device=args.device,
        on_shard=loading_lines(base),
    )
    dense = ProgressLines("evaluating the dense model")
    results = {"dense": evaluate(model, tokenizer, request, progress=dense)}
    apply_plan(model, plan, folder.order_file)
    pruned = ProgressLines("evaluating the pruned model")
    results["pruned"] = evaluate(model, tokenizer, request, progress=pruned)
    results["ratio"] = plan["steps"][-1]["ratio"] if plan["steps"] else 0.0
    write_json_atomic(folder.path / "evaluation.json", results)
    write_summary(folder.path, plan, flat_scores(results))
    return results


class ProgressLines:
    """``label: done / total unit (pct)`` lines on stderr, few enough for a log: the first, one
    at each further tenth (or after :attr:`QUIET_S` without one), never two within
    :attr:`MIN_GAP_S`, and always the last (``done == total``)."""

    MIN_GAP_S = 1.0
    QUIET_S = 30.0

    def __init__(
        self,
        label: str,
        unit: str = "requests",
        *,
        amount: Callable[[int], str] = "{:,}".format,
        clock: Callable[[], float] = time.monotonic,
        out=None,
    ) -> None:
        self.label, self.unit, self.amount, self.clock = label, unit, amount, clock
        self.out = out
        self._last_time: float | None = None
        self._last_tenth = -1
        self._finished = False

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        tenth = 10 * done // total if total > 0 else 0
        finished = total > 0 and done >= total
        if finished:
            if self._finished:
                return
        elif self._last_time is not None:
            gap = now - self._last_time
            if gap < self.MIN_GAP_S or (tenth <= self._last_tenth and gap < self.QUIET_S):
                return
        self._last_time, self._last_tenth, self._finished = now, tenth, finished
        share = f" ({done / total:.0%})" if total > 0 else ""
        line = f"{self.label}: {self.amount(done)} / {self.amount(total)} {self.unit}{share}"
        print(line, file=self.out or sys.stderr, flush=True)


def loading_lines(name_or_path: str) -> ProgressLines:
    """``loading NAME: 2 / 3 shards (67%)`` lines, for ``load_model(on_shard=...)``."""
    from mptui.engine.loading import model_label

    return ProgressLines(f"loading {model_label(name_or_path)}", "shards")
