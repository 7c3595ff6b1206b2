"""Time per step of N workers against one, in the same run, and the split's balance.

Each world size runs the same first steps of the search (a real multi-worker run of forked
workers on gloo, one thread each: bench/world.py); the sizes are interleaved over the repeats so
that a machine busy with something else slows them alike. The plans must be identical. The
report gives the median seconds per step, the speed-up against one worker, and a projection for
a Llama-2-7B search on 8 GPUs from the balance of the cost split (docs/method.md §4).
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from mptui.engine.api import CalibrationSpec, PruneSettings, RunRequest
from mptui.engine.control import commands as cmd
from mptui.engine.control import events as ev
from mptui.engine.workers.team import longest_first

from .world import run_world

#: The reference 7B search on one H200 by the FLOP count (792 PFLOP at 45-55% of the bf16 peak:
#: 25-30 min); pass the measured figure with --one-gpu-minutes once a GPU has run it.
ESTIMATED_ONE_GPU_MINUTES = 27.5
LLAMA2_7B_LAYERS = 32


def split_by_cost(costs: Sequence[int], world_size: int) -> list[list[int]]:
    """Indices of ``costs`` for each rank as equally fast workers take them from a queue in
    :func:`longest_first` order: each next item goes to the least loaded (lowest rank on
    ties). This is the balance a step gets (engine/search/step_work.py hands out the queue); the
    projection to more GPUs is made from it."""
    shares: list[list[int]] = [[] for _ in range(world_size)]
    loads = [(0, rank) for rank in range(world_size)]
    for index in longest_first(costs):
        load, rank = heapq.heappop(loads)
        shares[rank].append(index)
        heapq.heappush(loads, (load + costs[index], rank))
    return [sorted(share) for share in shares]


class StepTimer:
    """The leader's subscriber: seconds of each committed step, stopping after ``steps``."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.seconds: list[float] = []
        self.structures: list[str] = []
        self.engine = None

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.StepCommitted):
            self.seconds.append(event.seconds)
            self.structures.append(event.step.structure.id)
            if len(self.seconds) >= self.steps:
                self.engine.send(cmd.Stop())

    def result(self) -> tuple[list[float], list[str]]:
        return self.seconds, self.structures


def request_from(args: argparse.Namespace) -> RunRequest:
    settings = PruneSettings.with_distribution(
        args.target_ratio,
        args.distribution,
        calibration=CalibrationSpec(args.calibration, args.nsamples, args.seqlen),
        batch_size=args.batch_size,
    )
    return RunRequest(args.model, settings, device="cpu")


def step_balance(costs: list[int], world_size: int) -> float:
    """Busiest worker's share of a step's work against a perfect split (1.0 is perfect)."""
    loads = [sum(costs[i] for i in share) for share in split_by_cost(costs, world_size)]
    return max(loads) / (sum(costs) / world_size)


def reference_balance(world_size: int, layers: int = LLAMA2_7B_LAYERS) -> float:
    """Mean balance, weighted by work, over the steps of a Llama-2-7B search at 22% with
    44:52:4 and the reference groups: the budget gives about 7 block steps (a sub-block is
    1-2% of the parameters), 61 MLP steps (1,024 channels, 0.19% each) and 28 head steps (128
    channels, 0.03% each). A block candidate runs from its own boundary; a width candidate from
    its layer's MLP or attention boundary."""
    sub_blocks = 2 * layers
    head = 1  # the final norm and LM head, as Scorer.cost counts them
    block_step = [sub_blocks - b + head for b in range(sub_blocks)]
    mlp_step = [sub_blocks - (2 * layer + 1) + head for layer in range(layers)]
    attn_step = [sub_blocks - 2 * layer + head for layer in range(layers)]
    shapes = [block_step[k:] for k in range(7)] + [mlp_step] * 61 + [attn_step] * 28
    weights = [sum(shape) for shape in shapes]
    balances = [step_balance(shape, world_size) for shape in shapes]
    return sum(b * w for b, w in zip(balances, weights, strict=True)) / sum(weights)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench workers", description=__doc__)
    parser.add_argument("--model", default="mptui/demo/model")
    parser.add_argument("--calibration", default="mptui/demo/calibration.txt")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--target-ratio", type=float, default=0.5)
    parser.add_argument("--distribution", default="1:1:0")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="world sizes, the first is the baseline")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one-gpu-minutes", type=float, default=ESTIMATED_ONE_GPU_MINUTES)
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    request = request_from(args)
    sizes = [int(n) for n in args.workers.split(",")]
    seconds: dict[int, list[float]] = {n: [] for n in sizes}
    plans: dict[int, list[str]] = {}
    for _ in range(args.repeats):
        for size in sizes:
            step_seconds, structures = run_world(size, request, lambda: StepTimer(args.steps))
            seconds[size] += step_seconds
            plans.setdefault(size, structures)
            if structures != plans[sizes[0]]:
                raise SystemExit(f"{size} workers chose {structures}, 1 chose {plans[sizes[0]]}")
    per_step = {n: statistics.median(s) for n, s in seconds.items()}
    base = per_step[sizes[0]]
    balance8 = reference_balance(8)
    report = {
        "model": args.model,
        "steps": args.steps,
        "repeats": args.repeats,
        "per_step_seconds": per_step,
        "speedup": {n: base / per_step[n] for n in sizes},
        "plans_equal": True,
        "projection_8_gpus": {
            "one_gpu_minutes": args.one_gpu_minutes,
            "balance": balance8,
            "minutes": args.one_gpu_minutes * balance8 / 8,
        },
    }
    print("| workers | s/step (median) | speed-up |")
    print("|---|---|---|")
    for n in sizes:
        print(f"| {n} | {per_step[n]:.2f} | {report['speedup'][n]:.2f}x |")
    print(
        f"\nplans equal across world sizes: yes ({args.steps} steps x {args.repeats} repeats)\n"
        f"8 GPUs, Llama-2-7B at 22%: balance {balance8:.3f} of a perfect split -> "
        f"{args.one_gpu_minutes:.1f} min on one GPU becomes "
        f"{report['projection_8_gpus']['minutes']:.1f} min"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report
