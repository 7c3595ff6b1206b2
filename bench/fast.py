"""``python -m bench fast``: what ``--fast`` saves and how often it chooses as the exact search.

The exact search runs to the end (or ``--steps``); at every step each candidate's per-row NLLs
on every calibration row are kept. The fast search of engine/fast_search.py is then replayed on
those very numbers for each ``--margins`` and ``--tolerances`` value: what a fast run computes
for a row is what the exact run computed for it (up to how rows are grouped into batches), so
each setting costs no extra model work and all are compared on the same steps. The exact
choice is committed, so each step compares the two choices from the same model. Reported per
setting: the FLOPs of both (bench/flops.py, prefix cache on, only the rows actually scored),
their ratio, the share of steps whose fast choice equals the exact one (and the share within
:data:`TIE_TOLERANCE` of its perplexity), the candidates fully scored per step, and the relative
perplexity cost of each differing choice (its exact score over the exact winner's, minus 1).
Last, the exact early exit (a candidate stops once it can no longer win) is replayed on the
same numbers, to see whether it would pay.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from mptui.engine.defaults import DEFAULT_FAST_MARGIN, DEFAULT_FAST_TOLERANCE
from mptui.engine.fast_search import successive_halving
from mptui.engine.run_request import RunRequest
from mptui.engine.session_setup import build_session
from mptui.engine.settings import CalibrationSpec, PruneSettings

from .flops import candidate_flops

#: A differing choice whose exact perplexity is within this (relative) of the exact winner's is
#: a tie at the precision scoring has anyway (compiled fp32 scores differ by ~1e-4; bf16 more).
TIE_TOLERANCE = 1e-4


def lowest(scores: dict) -> object:
    """The lowest score, the first in canonical order on ties (the engine's rule)."""
    return min(scores, key=scores.__getitem__)


def record_steps(args) -> list[dict]:
    """Run the exact search; per step, every candidate's per-row NLLs and FLOPs per row."""
    settings = PruneSettings.with_distribution(
        args.target_ratio, args.distribution,
        calibration=CalibrationSpec(args.calibration, args.nsamples, args.seqlen),
        batch_size=args.batch_size, mlp_group=args.mlp_group, compile="off",
    )  # fmt: skip
    session = build_session(RunRequest(args.model, settings, device="cpu"), lambda event: None)
    steps = []
    for _ in range(args.steps):
        dimension = session.current_dimension()
        if dimension is None:
            break
        candidates = session.eligible(dimension)
        seqlen = session.scorers[dimension].chunks.shape[1]
        nll = {c: session.candidate_row_nll(c) for c in candidates}
        flops_per_row = {
            c: candidate_flops(session.adapter, c, c.sub_block, 1, seqlen) for c in candidates
        }
        steps.append({"dimension": dimension, "nll": nll, "flops_per_row": flops_per_row})
        exact = {c: values.mean().item() for c, values in nll.items()}
        choice = lowest(exact)
        session.commit(choice, session.score_candidate(choice), "engine")
    return steps


def replay(steps: list[dict], margin: float, tolerance: float) -> dict:
    """The fast search on the recorded numbers, against the exact choice of every step."""
    exact_flops = fast_flops = 0.0
    equal, fully, costs = 0, 0, []
    for step in steps:
        nll, per_row = step["nll"], step["flops_per_row"]
        rows = len(next(iter(nll.values())))
        evaluations = list(successive_halving(
            list(nll), lambda c, r, nll=nll: nll[c][r.start : r.stop], rows, margin, tolerance
        ))  # fmt: skip
        exact = {c: values.mean().item() for c, values in nll.items()}
        full = {e.candidate: exact[e.candidate] for e in evaluations if e.rows == rows}
        choice, fast_choice = lowest(exact), lowest(full)
        equal += choice == fast_choice
        fully += len(full)
        if choice != fast_choice:  # relative perplexity cost of the fast choice
            costs.append(math.exp(exact[fast_choice] - exact[choice]) - 1)
        exact_flops += sum(per_row[c] * rows for c in nll)
        fast_flops += sum(per_row[e.candidate] * e.new_rows for e in evaluations)
    near = sum(1 for cost in costs if cost <= TIE_TOLERANCE)
    return {
        "margin": margin, "tolerance": tolerance, "flop_ratio": exact_flops / fast_flops,
        "within_tolerance_share": (equal + near) / len(steps),
        "equal_share": equal / len(steps), "equal": equal, "steps": len(steps),
        "fully_scored_per_step": fully / len(steps), "differing_ppl_costs": costs,
    }  # fmt: skip


def early_exit(steps: list[dict], leader_first: bool) -> dict:
    """The exact search with an early exit, on the recorded numbers: a candidate stops at the
    first row where its NLL summed so far exceeds the best complete candidate's sum (every
    row's NLL is positive, so it can no longer win). Checked after every row: the most such an
    exit can save. ``leader_first`` scores candidates in the order of the previous step's
    scores (the likely winners first, which lowers the bar sooner), else in canonical order."""
    exact_flops = exit_flops = 0.0
    previous: dict = {}
    for step in steps:
        nll, per_row = step["nll"], step["flops_per_row"]
        rows = len(next(iter(nll.values())))
        order = list(nll)
        if leader_first:
            order.sort(key=lambda c: previous.get(c, math.inf))
        best, choice = math.inf, None
        for candidate in order:
            running = nll[candidate].cumsum(0)
            beaten = (running > best).nonzero()
            used = int(beaten[0]) + 1 if len(beaten) else rows
            exit_flops += per_row[candidate] * used
            if used == rows and running[-1].item() < best:
                best, choice = running[-1].item(), candidate
        exact = {c: values.mean().item() for c, values in nll.items()}
        assert exact[choice] == exact[lowest(exact)], "the early exit changed a choice"
        exact_flops += sum(per_row[c] * rows for c in nll)
        previous = exact
    return {"leader_first": leader_first, "flop_ratio": exact_flops / exit_flops}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench fast", description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--nsamples", type=int, default=0)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=1000, help="at most this many steps")
    parser.add_argument("--target-ratio", type=float, default=0.25)
    parser.add_argument("--distribution", default="40:40:20")
    parser.add_argument("--mlp-group", type=int, default=None)
    parser.add_argument("--margins", default=f"{DEFAULT_FAST_MARGIN},2,1,0.5,0")
    parser.add_argument("--tolerances", default=f"0,{DEFAULT_FAST_TOLERANCE}")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    steps = record_steps(args)
    rows = len(next(iter(steps[0]["nll"].values())))
    candidates = sum(len(s["nll"]) for s in steps) / len(steps)
    print(f"{args.model}: {len(steps)} steps on {rows} rows x {args.seqlen} tokens, "
          f"{candidates:.1f} candidates per step")  # fmt: skip
    print("| tolerance | margin (SE) | exact/fast FLOPs | same choice | same within 1e-4 ppl | "
          "fully scored per step | ppl cost of each differing choice |\n"
          "|---|---|---|---|---|---|---|")  # fmt: skip
    results = [
        replay(steps, float(m), float(t))
        for t in args.tolerances.split(",")
        for m in args.margins.split(",")
    ]
    for r in results:
        print(
            f"| {r['tolerance']:g} | {r['margin']:g} | {r['flop_ratio']:.2f}x | "
            f"{r['equal']}/{r['steps']} "
            f"({r['equal_share']:.1%}) | {r['within_tolerance_share']:.1%} | "
            f"{r['fully_scored_per_step']:.1f} | "
            f"{', '.join(f'{c:+.0e}' for c in r['differing_ppl_costs']) or '—'} |"
        )
    exits = [early_exit(steps, leader_first) for leader_first in (False, True)]
    for e in exits:
        order = "previous step's ranking" if e["leader_first"] else "canonical order"
        print(f"exact early exit, {order}: {e['flop_ratio']:.3f}x fewer FLOPs, same choices")
    report = {"model": args.model, "rows": rows, "results": results, "early_exit": exits}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report
