"""``python -m bench fast``: what ``--fast`` saves and how often it chooses as the exact search.

At every step of the exact search both selections run on the same model: the exact one (every
candidate on every row) and the fast one (successive halving, engine/fast_search.py). The exact
choice is committed, so each step compares the two choices from the same state. Reported: the
FLOPs of each (bench/flops.py, prefix cache on, rows actually scored), their ratio, the share of
steps whose fast choice equals the exact one, and the seconds of each (measured alternately in
the same process, so the ratio is fair on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mptui.engine.calibration import CalibrationSpec
from mptui.engine.fast_search import FAST_MARGIN, exhaustive, successive_halving
from mptui.engine.settings import PruneSettings
from mptui.engine.setup import RunRequest, build_session

from .flops import candidate_flops


def lowest(scores: dict) -> object:
    """The lowest score, the first in canonical order on ties (the engine's rule)."""
    return min(scores, key=scores.__getitem__)


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
    parser.add_argument("--margin", type=float, default=FAST_MARGIN)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = PruneSettings.with_distribution(
        args.target_ratio, args.distribution,
        calibration=CalibrationSpec(args.calibration, args.nsamples, args.seqlen),
        batch_size=args.batch_size, mlp_group=args.mlp_group, compile="off",
    )  # fmt: skip
    session = build_session(RunRequest(args.model, settings, device="cpu"), lambda event: None)
    adapter = session.adapter
    totals = {"exact": [0.0, 0.0], "fast": [0.0, 0.0]}  # FLOPs, seconds
    steps = []
    for _ in range(args.steps):
        dimension = session.current_dimension()
        if dimension is None:
            break
        candidates = session.eligible(dimension)
        rows, seqlen = session.scorers[dimension].chunks.shape
        started = time.perf_counter()
        exact = {e.candidate: e.score
                 for e in exhaustive(candidates, session.candidate_row_nll, rows)}  # fmt: skip
        totals["exact"][1] += time.perf_counter() - started
        started = time.perf_counter()
        evaluations = list(
            successive_halving(candidates, session.candidate_row_nll, rows, args.margin)
        )
        totals["fast"][1] += time.perf_counter() - started
        for candidate in candidates:
            totals["exact"][0] += candidate_flops(adapter, candidate, candidate.sub_block, rows,
                                                  seqlen)  # fmt: skip
        for e in evaluations:
            totals["fast"][0] += candidate_flops(adapter, e.candidate, e.candidate.sub_block,
                                                 e.new_rows, seqlen)  # fmt: skip
        full = {e.candidate: e.score for e in evaluations if e.rows == e.total_rows}
        choice, fast_choice = lowest(exact), lowest(full)
        steps.append({"dimension": dimension, "exact": choice.id, "fast": fast_choice.id,
                      "candidates": len(candidates), "fully_scored": len(full)})  # fmt: skip
        session.commit(choice, exact[choice], "engine")
    equal = sum(s["exact"] == s["fast"] for s in steps)
    report = {
        "model": args.model, "rows": rows, "margin": args.margin, "steps": steps,
        "flops": {mode: flops for mode, (flops, _) in totals.items()},
        "seconds": {mode: seconds for mode, (_, seconds) in totals.items()},
        "flop_ratio": totals["exact"][0] / totals["fast"][0],
        "time_ratio": totals["exact"][1] / totals["fast"][1],
        "equal_share": equal / len(steps),
    }  # fmt: skip
    print(
        f"{len(steps)} steps on {rows} rows x {seqlen} tokens, margin {args.margin} SE: "
        f"exact/fast FLOPs {report['flop_ratio']:.2f}x, time {report['time_ratio']:.2f}x; "
        f"same choice in {equal}/{len(steps)} steps ({report['equal_share']:.1%}); "
        f"fully scored per step {sum(s['fully_scored'] for s in steps) / len(steps):.1f} of "
        f"{sum(s['candidates'] for s in steps) / len(steps):.1f}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report
