"""Time the engine's search, cached against naive, in one process on the same data.

For each mode the same ``Pruning`` runs the same first steps (the plans are identical by
construction, a test checks it); we report seconds per step, candidates/s, tokens/s, achieved
FLOP/s against a FLOP count of the work, peak memory, and the naive/cached ratios of time and of
FLOPs.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import torch

from mptui.engine.search.pruning import StepStats
from mptui.engine.search.run_request import RunRequest
from mptui.engine.search.settings import CalibrationSpec, PruneSettings
from mptui.engine.search.setup import build_pruning

from .flops import evaluation_flops
from .models import build_llama_in_memory


@dataclass
class ModeResult:
    mode: str
    steps: int
    candidates: int
    seconds: float
    flops: float
    tokens: int
    peak_bytes: int
    structures: list[str]

    @property
    def per_step(self) -> float:
        return self.seconds / self.steps


def peak_memory(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return psutil.Process().memory_info().rss


def run_mode(args, prefix_cache: bool) -> ModeResult:
    settings = PruneSettings.with_distribution(
        args.target_ratio,
        args.distribution,
        calibration=CalibrationSpec(args.calibration, args.nsamples, args.seqlen),
        batch_size=args.batch_size,
        mlp_group=args.mlp_group,
        prefix_cache=prefix_cache,
    )
    request = RunRequest(args.model, settings, dtype=args.dtype, device=args.device)
    loaded = None
    if args.model == "llama2-7b":
        loaded = build_llama_in_memory(args.device, args.dtype or "bfloat16")
    pruning = build_pruning(request, lambda event: None, loaded)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    chunks = next(iter(pruning.scorers.values())).chunks
    batch, seqlen = chunks.shape
    result = ModeResult("cached" if prefix_cache else "naive", 0, 0, 0.0, 0.0, 0, 0, [])
    for _ in range(args.steps):
        dimension = pruning.current_dimension()
        if dimension is None:
            break
        candidates = pruning.eligible(dimension)
        started = time.perf_counter()
        scores = {c: pruning.score_candidate(c) for c in candidates}
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        best = min(candidates, key=scores.get)
        for candidate in candidates:
            start = candidate.sub_block if prefix_cache else 0
            result.flops += evaluation_flops(pruning.adapter, start, batch, seqlen)
        pruning.commit(best, scores[best], "engine", StepStats(seconds, len(candidates)))
        result.steps += 1
        result.candidates += len(candidates)
        result.seconds += seconds
        result.tokens += len(candidates) * chunks.numel()
        result.structures.append(best.id)
    result.peak_bytes = peak_memory(args.device)
    del pruning  # free the model before the other mode builds its own
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench search", description=__doc__)
    parser.add_argument(
        "--model", required=True, help="a model folder, or llama2-7b (random, built in memory)"
    )
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--nsamples", type=int, default=0)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--target-ratio", type=float, default=0.5)
    parser.add_argument("--distribution", default="1:1:0")
    parser.add_argument("--mlp-group", type=int, default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    naive = run_mode(args, prefix_cache=False)
    cached = run_mode(args, prefix_cache=True)
    assert naive.structures == cached.structures, "cached and naive plans differ"
    time_ratio = naive.seconds / cached.seconds
    flop_ratio = naive.flops / cached.flops
    report = {
        "model": args.model,
        "device": args.device,
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cpus",
        "torch_threads": torch.get_num_threads(),
        "modes": {r.mode: asdict(r) for r in (naive, cached)},
        "time_ratio": time_ratio,
        "flop_ratio": flop_ratio,
        "ratio_share": time_ratio / flop_ratio,
    }
    for r in (naive, cached):
        print(
            f"{r.mode:>6}: {r.steps} steps, {r.per_step:7.3f} s/step, "
            f"{r.candidates / r.seconds:7.2f} cand/s, {r.tokens / r.seconds:10,.0f} tok/s, "
            f"{r.flops / r.seconds / 1e9:8.2f} GFLOP/s, peak {r.peak_bytes / 2**20:,.0f} MiB"
        )
    print(
        f"naive/cached time {time_ratio:.3f}x, FLOPs {flop_ratio:.3f}x, "
        f"reached {report['ratio_share']:.1%} of the FLOP ratio"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report
