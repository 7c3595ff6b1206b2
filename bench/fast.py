"""``python -m bench fast``: ``--fast`` judged by the plan it ends with.

The exact search, then the fast search for each ``--margins`` x ``--tolerances`` setting, runs
to the end through the engine (:class:`~mptui.engine.runner.Engine`, what ``mptui --fast``
runs), each from a fresh load of the model. Each final plan is judged by the ratio it reached,
its calibration perplexity (its last step's score, on every calibration row), its held-out
perplexity (engine/output/evaluate.py's rolling perplexity on ``--validation``: the same rows for
every
plan) and the FLOPs its search spent scoring candidates (bench/flops.py, prefix cache on: each
candidate from its own sub-block on, LM head included, times the rows it was scored on, as the
engine's ``CandidateScored`` events report them). A setting passes when it reached the exact
plan's ratio, neither perplexity is more than :data:`PPL_TOLERANCE` above the exact plan's, and
it spent at least :data:`MIN_FLOP_RATIO` times fewer FLOPs. Step-by-step agreement is not
measured: two near-tied candidates make the same plan to within the scores' own precision.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mptui.engine.control import events as ev
from mptui.engine.defaults import DEFAULT_FAST_MARGIN, DEFAULT_FAST_TOLERANCE
from mptui.engine.output.evaluate import rolling_perplexity
from mptui.engine.runner import Engine
from mptui.engine.search.run_request import RunRequest
from mptui.engine.search.settings import CalibrationSpec, PruneSettings

from .flops import scored_flops

#: Most a fast plan's perplexity (calibration or held-out) may exceed the exact plan's, relative.
PPL_TOLERANCE = 0.01
#: Fewest times fewer FLOPs than the exact search that make the fast search worth having.
MIN_FLOP_RATIO = 3.0
#: Final ratios closer than this (absolute) are the same ratio.
RATIO_TOLERANCE = 1e-3


class ScoringFlops:
    """An engine subscriber counting the FLOPs and rows of the candidate scoring it reports.

    Subscribers run on the engine thread between two evaluations, so the model is as the event
    describes it. A candidate's ``rows`` grow round by round under ``--fast``: the rows it was
    scored on are the rise since its previous report in the same step. Its FLOPs per row are
    counted once a step (the count tries the candidate on the model, on the engine's time)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.flops = 0.0
        self.rows = 0
        self._rows_so_far: dict[str, int] = {}
        self._per_row: dict[str, float] = {}

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.StepStarted):
            self._rows_so_far, self._per_row = {}, {}
        elif isinstance(event, ev.CandidateScored):
            new_rows = event.rows - self._rows_so_far.get(event.structure, 0)
            self._rows_so_far[event.structure] = event.rows
            if event.structure not in self._per_row:
                pruning = self.engine.pruning
                structure = pruning.structure_from_id(event.structure)
                scorer = pruning.scorer_for(structure)
                self._per_row[event.structure] = scored_flops(pruning.adapter, scorer, structure, 1)
            self.flops += new_rows * self._per_row[event.structure]
            self.rows += new_rows


def run_search(args, held_out: str, fast: bool, margin: float, tolerance: float) -> dict:
    """One search to the end; its plan's ratio, perplexities (``held_out``: the text of the
    held-out one) and the FLOPs it spent."""
    settings = PruneSettings.with_distribution(
        args.target_ratio, args.distribution,
        calibration=CalibrationSpec(args.calibration, args.nsamples, args.seqlen),
        batch_size=args.batch_size, mlp_group=args.mlp_group, compile="off",
        fast=fast, fast_margin=margin, fast_tolerance=tolerance,
    )  # fmt: skip
    engine = Engine(RunRequest(args.model, settings, device="cpu"))
    counter = ScoringFlops(engine)
    engine.subscribe(counter)
    started = time.monotonic()
    finished = engine.run()
    if engine.failure is not None:
        raise engine.failure
    seconds = time.monotonic() - started
    steps = finished.plan["steps"]
    pruning = engine.pruning
    return {
        "fast": fast, "margin": margin if fast else None, "tolerance": tolerance if fast else None,
        "steps": len(steps), "structures": [s["structure"] for s in steps],
        "ratio": steps[-1]["ratio"], "calibration_ppl": steps[-1]["score"],
        "held_out_ppl": rolling_perplexity(pruning.model, pruning.tokenizer, held_out, args.seqlen),
        "flops": counter.flops, "rows_scored": counter.rows, "seconds": seconds,
    }  # fmt: skip


def judge(exact: dict, fast: dict) -> dict:
    """The fast plan against the exact one: FLOP ratio, relative perplexity differences, verdict."""
    judged = {
        **fast,
        "flop_ratio": exact["flops"] / fast["flops"],
        "same_plan": fast["structures"] == exact["structures"],
        "same_ratio": abs(fast["ratio"] - exact["ratio"]) <= RATIO_TOLERANCE,
        "calibration_diff": fast["calibration_ppl"] / exact["calibration_ppl"] - 1,
        "held_out_diff": fast["held_out_ppl"] / exact["held_out_ppl"] - 1,
    }
    judged["passes"] = (
        judged["same_ratio"]
        and judged["calibration_diff"] <= PPL_TOLERANCE
        and judged["held_out_diff"] <= PPL_TOLERANCE
        and judged["flop_ratio"] >= MIN_FLOP_RATIO
    )
    return judged


def print_exact(exact: dict) -> None:
    print(
        f"exact: {exact['steps']} steps to ratio {exact['ratio']:.4f}, calibration ppl "
        f"{exact['calibration_ppl']:.4f}, held-out ppl {exact['held_out_ppl']:.4f}, "
        f"{exact['flops'] / 1e9:,.0f} GFLOP ({exact['rows_scored']} rows), {exact['seconds']:.0f} s"
    )
    print(
        "| tolerance | margin (SE) | exact/fast FLOPs | ratio | calibration ppl (vs exact) | "
        "held-out ppl (vs exact) | same plan | verdict | seconds |\n"
        "|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )


def print_row(r: dict) -> None:
    print(
        f"| {r['tolerance']:g} | {r['margin']:g} | {r['flop_ratio']:.2f}x | "
        f"{r['ratio']:.4f} | {r['calibration_ppl']:.4f} ({r['calibration_diff']:+.2%}) | "
        f"{r['held_out_ppl']:.4f} ({r['held_out_diff']:+.2%}) | "
        f"{'yes' if r['same_plan'] else 'no'} | {'PASS' if r['passes'] else 'fail'} | "
        f"{r['seconds']:.0f} |",
        flush=True,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench fast", description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--validation", required=True, help="held-out text (blank-line docs)")
    parser.add_argument("--nsamples", type=int, default=0)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--target-ratio", type=float, default=0.25)
    parser.add_argument("--distribution", default="40:40:20")
    parser.add_argument("--mlp-group", type=int, default=None)
    parser.add_argument("--margins", default=f"{DEFAULT_FAST_MARGIN},2,1")
    parser.add_argument("--tolerances", default=f"0,{DEFAULT_FAST_TOLERANCE}")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    held_out = Path(args.validation).read_text(encoding="utf-8")  # a bad path fails at once
    exact = run_search(args, held_out, False, DEFAULT_FAST_MARGIN, DEFAULT_FAST_TOLERANCE)
    print_exact(exact)
    results = []
    for tolerance in args.tolerances.split(","):
        for margin in args.margins.split(","):
            fast = run_search(args, held_out, True, float(margin), float(tolerance))
            results.append(judge(exact, fast))
            print_row(results[-1])
    report = {"model": args.model, "exact": exact, "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report
