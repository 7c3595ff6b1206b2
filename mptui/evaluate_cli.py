"""``mptui eval``: zero-shot scores and a rolling perplexity, for a model or a session.

With ``--session DIR`` the session's plan is re-applied to its dense model, both are scored
(and the recovered model too once the session was fine-tuned), and the results go into the
session (``evaluation.json`` and the summary) side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mptui.engine.api import DEFAULT_DTYPE

from .cli_common import (
    Doing,
    Parser,
    ProgressLines,
    add_device,
    add_dtype,
    add_lm_eval_options,
    loading_lines,
    print_failure,
)

__all__ = ["ProgressLines", "build_parser", "from_args", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mptui eval", description=__doc__)
    parser.add_argument("model", nargs="?", help="hub id or model folder (or use --session)")
    parser.add_argument("--session", default=None, help="evaluate a session: dense and pruned")
    add_lm_eval_options(parser)
    parser.add_argument(
        "--perplexity", default=None, metavar="FILE", help="text file for a rolling perplexity"
    )
    add_dtype(parser, DEFAULT_DTYPE, "%(default)s; with --session, the session's")
    add_device(parser)
    return parser


def main(argv: list[str]) -> int:
    """``mptui eval ARGS``: ``argv`` is ARGS."""
    parser = build_parser()
    return from_args(parser, parser.parse_args(argv))


def from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The command on arguments ``parser`` parsed (its own, or ``mptui``'s subparser)."""
    if not args.model and not args.session:
        parser.error("give a MODEL or --session DIR")
    from mptui.terminal import quiet_libraries, quiet_lm_eval

    quiet_libraries()
    if args.tasks or not args.perplexity:  # lm-eval runs (given tasks, or the default ones)
        quiet_lm_eval()
    doing = Doing("loading the model")
    session = Path(args.session) if args.session else None
    again = f"run mptui eval {f'--session {session}' if session else args.model} again"
    try:
        results = run(args, doing)
    except Exception as error:  # a lost device or the engine's error: one line (else raised)
        return print_failure(error, doing, session, again)
    print(json.dumps(results, indent=2))
    return 0


def run(args, doing: Doing | None = None) -> dict:
    """Evaluate; ``doing`` is told each phase as it starts (for a lost device's line)."""
    from mptui.engine.api import (
        EvalRequest,
        SessionFolder,
        check_tasks,
        evaluate,
        flat_scores,
        load_config,
        load_model,
        rebuild_pruned,
        recovered_model,
        session_files,
        write_json_atomic,
        write_summary,
    )

    folder = SessionFolder(Path(args.session)) if args.session else None
    plan = folder.read_plan() if folder else None  # a damaged session fails before lm-eval loads
    request = EvalRequest.from_options(
        args.tasks, args.perplexity, args.seqlen, include_path=args.include_path,
        limit=args.limit, batch_size=args.batch_size,
    )  # fmt: skip
    request.check()
    load_config(plan.model.name_or_path if plan else args.model)  # a bad model: one line now,
    if request.tasks:  # not after lm-eval's seconds of import (a perplexity alone asks none:
        check_tasks(request.tasks, request.include_path)  # lm-eval's index then is not built)
    doing = doing or Doing("")
    doing("loading the model")
    if folder is None or plan is None:
        model, tokenizer = load_model(
            args.model, dtype=args.dtype, device=args.device, on_shard=loading_lines(args.model)
        )
        doing("evaluating")
        return evaluate(model, tokenizer, request, progress=ProgressLines("evaluating"))
    results = {}

    def evaluate_dense(model, tokenizer) -> None:
        doing("evaluating the dense model")
        dense = ProgressLines("evaluating the dense model")
        results["dense"] = evaluate(model, tokenizer, request, progress=dense)
        doing("re-applying the plan")

    model, tokenizer = rebuild_pruned(
        plan,
        folder.order_file,
        dtype=args.dtype if args.dtype != "auto" else None,
        device=args.device,
        on_shard=loading_lines(plan.model.name_or_path),
        before_pruning=evaluate_dense,
    )
    doing("evaluating the pruned model")
    pruned = ProgressLines("evaluating the pruned model")
    results["pruned"] = evaluate(model, tokenizer, request, progress=pruned)
    doing("merging the recovery's adapter")
    recovered = recovered_model(model, folder.path)
    if recovered is not None:
        doing("evaluating the recovered model")
        progress = ProgressLines("evaluating the recovered model")
        results["recovered"] = evaluate(recovered, tokenizer, request, progress=progress)
    doing("saving the results")
    results["ratio"] = plan.ratio
    write_json_atomic(folder.path / session_files.EVALUATION, results)
    write_summary(folder.path, plan, flat_scores(results))
    return results
