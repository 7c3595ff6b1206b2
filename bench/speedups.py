"""``python -m bench speedups``: each exact speed-up of scoring alone, against the baseline.

The baseline scores the dense model from the embeddings (one candidate's worth of the naive
search) with batch size 2 and eager sub-blocks; each variant changes one thing: the batch size
chosen from memory, or ``torch.compile``d sub-blocks. Baseline and variant run alternately
(A B A B ...) in one process and the medians are compared, so a busy machine slows both alike.
The variant's score is checked against the baseline's. (The labels kept on the device and the
single host sync per candidate change nothing on the CPU, where copies and syncs are free; the
GPU check measures them as part of every step.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mptui.engine.model.adapters import adapter_for
from mptui.engine.search.calibration import load_calibration
from mptui.engine.search.scoring import Scorer
from mptui.engine.search.settings import CalibrationSpec


def timed(scorer: Scorer) -> tuple[float, float]:
    started = time.perf_counter()
    score = scorer.score()
    return time.perf_counter() - started, score


def compare(baseline: Scorer, variant: Scorer, reps: int) -> dict:
    """Medians of ``reps`` alternating runs, after one warm-up each (compiling happens there)."""
    warm_up = timed(variant)[0]
    timed(baseline)
    times: dict[str, list[float]] = {"baseline": [], "variant": []}
    scores = {}
    for _ in range(reps):
        for name, scorer in (("baseline", baseline), ("variant", variant)):
            seconds, scores[name] = timed(scorer)
            times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "baseline_s": medians["baseline"], "variant_s": medians["variant"],
        "speedup": medians["baseline"] / medians["variant"], "first_call_s": warm_up,
        "relative_score_difference": abs(scores["variant"] / scores["baseline"] - 1),
        "batch_size": variant.batch_size,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench speedups", description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--nsamples", type=int, default=0)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    adapter = adapter_for(model)
    spec = CalibrationSpec(args.calibration, args.nsamples, args.seqlen)
    chunks = load_calibration(spec, AutoTokenizer.from_pretrained(args.model), None)

    def scorer(**options) -> Scorer:
        return Scorer(model, adapter, chunks, **({"batch_size": 2} | options), prefix_cache=False)

    baseline = scorer()
    report = {
        "model": args.model, "rows": len(chunks), "seqlen": args.seqlen,
        "threads": torch.get_num_threads(),
        "batch from memory": compare(baseline, scorer(batch_size=None), args.reps),
        f"compiled ({args.compile_backend})": compare(
            baseline, scorer(compile_backend=args.compile_backend), args.reps
        ),
    }  # fmt: skip
    for name, result in report.items():
        if isinstance(result, dict):
            print(
                f"{name:>20}: {result['baseline_s']:.3f} s -> {result['variant_s']:.3f} s "
                f"({result['speedup']:.2f}x, batch {result['batch_size']}, first call "
                f"{result['first_call_s']:.1f} s, score differs by "
                f"{result['relative_score_difference']:.1e})"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report
