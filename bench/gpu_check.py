"""``python3 -m bench gpu-check``: the one prepared GPU measurement, as one table.

Run it first whenever a GPU machine is lent (bench/RESULTS.md). It needs nothing installed
beyond the GPU image's own packages (torch, transformers, accelerate, peft, psutil, safetensors,
nvidia-ml-py): it runs from a plain copy of the repository, downloads nothing, and builds a
model of Llama-2-7B's shape in memory in bf16. In order, it measures

1. the dense bf16 matmul peak of this GPU (the MFU denominator, measured, beside the spec's);
2. per scoring mode (cached and compiled, the default; cached and eager; naive, the reference's
   cost), with its memory peak reset: the ``Pruning``'s build (the first compile happens there),
   one block step and one MLP-width step, as seconds, achieved TFLOP/s (analytic FLOPs of
   bench/flops.py) and MFU against the measured and the spec peak;
3. after a width commit, one more MLP-width step and the graphs compiled during it (a new width
   must not recompile), and one commit's cache refresh;
4. the projected full 22% run at the reference settings (docs/method.md §5: 10 block, 55 MLP
   and 23 head steps on 35 block rows and 17 width rows of 2048 tokens);
5. with the 7B model freed, a short real search of the app in tmux, whose memory pane (NVML) is
   captured, when textual and tmux are there (the bare GPU image has neither: one line says so).

Each row is printed (flushed) and written to ``--json`` the moment it is measured, so a run cut
short by its time limit keeps everything it measured. The model's sub-blocks are scaled by a
seeded spread of factors so that candidates really differ and "same choice" means something;
the best/runner-up gap is printed beside it. ``--dry-run`` runs the same code on the CPU with a
tiny Llama (tests/engine/test_gpu_check.py runs it, and CI runs it on a copy of the GPU image's
packages), so the script cannot rot.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mptui.engine.model.adapters import adapter_for
from mptui.engine.search.pruning import Pruning
from mptui.engine.search.scoring import Scorer
from mptui.engine.search.settings import GroupSizes, PruneSettings
from mptui.engine.search.structures import Structure

from .app_capture import capture_memory_pane
from .flops import candidate_flops, evaluation_flops, scored_flops
from .models import LLAMA2_7B, build_llama_in_memory, spread_sub_blocks

#: The reference's 22% MultiPruner run on Llama-2-7B (docs/method.md §5 and §2).
REFERENCE_RUN = {
    "block_steps": 10, "mlp_steps": 55, "head_steps": 23,
    "block_rows": 35, "width_rows": 17, "seqlen": 2048,
}  # fmt: skip

#: Dense bf16 tensor-core peak of the H100 SXM and the H200 (NVIDIA's spec, without sparsity).
SPEC_PEAK_FLOPS = 989e12
#: What the time plan assumes: a share of the spec peak, and a fixed allowance for compiling.
PLANNED_MFU = 0.35
PLANNED_COMPILE_SECONDS = 120.0

TINY_LLAMA = {
    "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 176,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}  # fmt: skip


@dataclass(frozen=True)
class Profile:
    """What one run measures on: the model's shape, its precision and the work's size."""

    device: str
    dtype: str
    shape: dict
    rows: int
    seqlen: int
    mlp_group: int
    matmul_n: int
    matmul_reps: int
    compile_backend: object  # what --compile auto uses on a GPU; the dry run skips the C++ compile


GPU = Profile("cuda", "bfloat16", LLAMA2_7B, rows=8, seqlen=2048, mlp_group=1024,
              matmul_n=8192, matmul_reps=50, compile_backend="inductor")  # fmt: skip
DRY_RUN = Profile("cpu", "float32", TINY_LLAMA, rows=4, seqlen=64, mlp_group=16,
                  matmul_n=256, matmul_reps=5, compile_backend="aot_eager")  # fmt: skip


@dataclass(frozen=True)
class Mode:
    name: str
    prefix_cache: bool
    compiled: bool
    #: Score at most this many of a step's candidates, evenly spaced (None: all). Naively every
    #: candidate is one full forward, so a sample gives its seconds per candidate at a quarter
    #: of the cost; the cached modes score all (their costs differ, and their choices compare).
    sample: int | None = None

    def candidates(self, eligible: list[Structure]) -> list[Structure]:
        if self.sample is None or len(eligible) <= self.sample:
            return eligible
        return eligible[:: -(-len(eligible) // self.sample)]


#: The default run, the same eagerly, and the reference's cost.
MODES = (
    Mode("cached", True, True),
    Mode("cached, eager", True, False),
    Mode("naive", False, False, sample=16),
)


@dataclass
class StepTiming:
    """One step's candidates scored once: time, analytic FLOPs, and the rate against a peak."""

    name: str
    candidates: int
    seconds: float
    flops: float
    peak: float
    scores: list[float] = field(default_factory=list)  # per candidate, canonical order
    compiles: int = 0  # graphs compiled while the step ran

    @property
    def tflops(self) -> float:
        return self.flops / self.seconds / 1e12

    @property
    def mfu(self) -> float:
        return self.flops / self.seconds / self.peak

    def describe(self) -> str:
        spec = self.flops / self.seconds / SPEC_PEAK_FLOPS
        return (
            f"{self.seconds:.2f} s, {self.candidates} candidates, {self.tflops:.3g} TFLOP/s, "
            f"MFU {self.mfu:.1%} of measured, {spec:.1%} of spec"
        )


@dataclass
class Report:
    """Everything measured, kept as it comes (the table's rows carry the same figures)."""

    device: str
    model: str
    matmul_peak: float = 0.0
    steps: list[StepTiming] = field(default_factory=list)
    build_seconds: dict[str, float] = field(default_factory=dict)
    peak_bytes: dict[str, int] = field(default_factory=dict)
    refresh_seconds: float = 0.0
    compiled_with: str = ""
    cache_budget_bytes: int = 0
    cache_stride: int = 0
    cache_stored: int = 0
    batch_size: int = 0
    projection: dict[str, float] = field(default_factory=dict)
    memory_pane: list[str] = field(default_factory=list)


class Table:
    """The report's rows: each printed at once (flushed) and the JSON file rewritten with every
    row so far (atomically), so that a run killed by a time limit loses nothing it measured."""

    def __init__(self, profile: Profile, json_path: Path | None) -> None:
        self.profile = profile
        self.json_path = json_path
        self.rows: list[dict] = []
        print("| measure | value |\n|---|---|", flush=True)

    def add(self, measure: str, value: str, **figures) -> None:
        """Saved first, then printed: a row anyone saw is in the file."""
        self.rows.append({"measure": measure, "value": value, **figures})
        self.save(complete=False)
        print(f"| {measure} | {value} |", flush=True)

    def save(self, complete: bool) -> None:
        if self.json_path is None:
            return
        data = {"profile": profile_dict(self.profile), "complete": complete, "rows": self.rows}
        partial = self.json_path.with_name(self.json_path.name + ".partial")
        partial.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(partial, self.json_path)


def profile_dict(profile: Profile) -> dict:
    data = asdict(profile)
    data["compile_backend"] = str(profile.compile_backend)
    return data


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_bytes(device: str) -> int:
    """Allocated peak on a GPU since :func:`reset_peak`; on the CPU the process's RSS."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    import psutil

    return psutil.Process().memory_info().rss


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def matmul_peak(profile: Profile) -> float:
    """FLOP/s of the best of ``matmul_reps`` square matmuls in the run's dtype."""
    from mptui.engine.model.loading import resolve_dtype

    n, dtype = profile.matmul_n, resolve_dtype(profile.dtype, profile.device)
    a = torch.randn(n, n, device=profile.device, dtype=dtype)
    b = torch.randn(n, n, device=profile.device, dtype=dtype)
    (a @ b).sum().item()  # warm-up: kernels chosen, clocks up
    best = float("inf")
    for _ in range(profile.matmul_reps):
        synchronize(profile.device)
        started = time.perf_counter()
        a @ b
        synchronize(profile.device)
        best = min(best, time.perf_counter() - started)
    return 2.0 * n**3 / best


def build_model(profile: Profile):
    """The in-memory model, its sub-blocks spread apart (so candidates differ), and a check that
    every weight is where the profile says (a GPU run must not quietly run on the CPU)."""
    model, _tokenizer = build_llama_in_memory(profile.device, profile.dtype, profile.shape)
    spread_sub_blocks(model)
    wanted = torch.device(profile.device).type
    misplaced = [name for name, p in model.named_parameters() if p.device.type != wanted]
    assert not misplaced, f"{len(misplaced)} weights are not on {profile.device}: {misplaced[:3]}"
    return model


def build_pruning(profile: Profile, mode: Mode, model) -> Pruning:
    """A ``Pruning`` over random token rows (no calibration file, no channel ranking: timing only).
    Building it fills the prefix cache, and with it compiles the sub-blocks for the first time."""
    adapter = adapter_for(model)
    generator = torch.Generator().manual_seed(0)
    vocab = profile.shape["vocab_size"]
    chunks = torch.randint(0, vocab, (profile.rows, profile.seqlen), generator=generator)
    scorer = Scorer(
        model, adapter, chunks, prefix_cache=mode.prefix_cache,  # batch size: from memory
        compile_backend=profile.compile_backend if mode.compiled else None, on_warning=print,
    )  # fmt: skip
    scorer.current_score()  # what a run does first: the dense model's score
    settings = PruneSettings.with_distribution(0.5, "1:1:0", mlp_group=profile.mlp_group)
    groups = GroupSizes(profile.mlp_group, adapter.attn_group_channels, "gpu-check")
    scorers = dict.fromkeys(("blocks", "mlp_channels", "attn_heads"), scorer)
    return Pruning(model, adapter, settings, groups, scorers, "llama2-7b-shape")


def step_flops(pruning: Pruning, candidates: list[Structure]) -> float:
    """What scoring ``candidates`` runs: from each one's sub-block on with the prefix cache (at
    the stored boundary before it), from the embeddings without; the LM head always."""
    scorer = next(iter(pruning.scorers.values()))
    rows = scorer.chunks.shape[0]
    return sum(scored_flops(pruning.adapter, scorer, c, rows) for c in candidates)


def time_step(pruning: Pruning, dimension: str, name: str, peak: float, mode: Mode) -> StepTiming:
    """Score the candidates of ``dimension`` once (all, or the mode's sample)."""
    device = str(next(pruning.model.parameters()).device)
    candidates = mode.candidates(pruning.eligible(dimension))
    compiles = compiled_graphs()
    synchronize(device)
    started = time.perf_counter()
    scores = [pruning.score_candidate(candidate) for candidate in candidates]
    synchronize(device)
    seconds = time.perf_counter() - started
    flops = step_flops(pruning, candidates)
    return StepTiming(
        name, len(candidates), seconds, flops, peak, scores, compiled_graphs() - compiles
    )


def choice_gap(step: StepTiming) -> float:
    """How far the runner-up's score is above the best one's (relative)."""
    best, runner_up = sorted(step.scores)[:2]
    return runner_up / best - 1


def agreement(compiled: StepTiming, eager: StepTiming) -> str:
    """How far the compiled scores are from the eager ones, whether the choice is the same (the
    lowest score, the first on ties), and the gap that a difference would have to cross."""
    worst = max(abs(c / e - 1) for c, e in zip(compiled.scores, eager.scores, strict=True))
    same = compiled.scores.index(min(compiled.scores)) == eager.scores.index(min(eager.scores))
    return (
        f"scores within {worst:.1e} (relative), {'same' if same else 'DIFFERENT'} choice; "
        f"best/runner-up gap {choice_gap(eager):.1e}"
    )


def time_refresh(pruning: Pruning, device: str) -> float:
    """Seconds for the cache to follow one commit at the first sub-block (the worst case)."""
    candidate = pruning.eligible("blocks")[0]
    synchronize(device)
    started = time.perf_counter()
    pruning.commit(candidate, 0.0, "engine")
    synchronize(device)
    seconds = time.perf_counter() - started
    pruning.undo()
    return seconds


def commit_best(pruning: Pruning, step: StepTiming, dimension: str) -> Structure:
    """Commit the step's best candidate (its scores are in canonical order, as eligible)."""
    candidates = pruning.eligible(dimension)
    best = step.scores.index(min(step.scores))
    pruning.commit(candidates[best], step.scores[best], "engine")
    return candidates[best]


def project(report: Report, profile: Profile) -> dict[str, float]:
    """The reference's full run, from seconds per candidate row of the measured steps.

    Block steps see 64, 63, ... candidates; width steps are counted with every layer eligible
    (a slight overestimate); each commit pays one cache refresh on its dimension's rows.
    """
    ref, layers = REFERENCE_RUN, profile.shape["num_hidden_layers"]
    scale = ref["seqlen"] / profile.seqlen  # 1 on the GPU; the dry run's figure is arithmetic
    by_name = {s.name: s for s in report.steps}
    out = {}
    for mode in ("cached", "naive"):
        block = by_name[f"block step, {mode}"]
        width = by_name[f"MLP-width step, {mode}"]
        per_block_row = block.seconds / block.candidates / profile.rows * scale
        per_width_row = width.seconds / width.candidates / profile.rows * scale
        blocks = sum(max(0, 2 * layers - k) for k in range(ref["block_steps"]))
        blocks *= ref["block_rows"]
        widths = (ref["mlp_steps"] + ref["head_steps"]) * layers * ref["width_rows"]
        out[f"{mode} seconds"] = blocks * per_block_row + widths * per_width_row
    refresh_per_row = report.refresh_seconds / profile.rows * scale
    commits = ref["block_steps"] * ref["block_rows"]
    commits += (ref["mlp_steps"] + ref["head_steps"]) * ref["width_rows"]
    out["cached seconds"] += commits * refresh_per_row
    return out


#: Full forwards outside the steps, per mode: the dense score (and the cache fill, the timed
#: refresh, its undo and the width commit of the default mode).
FULL_PASSES = {"cached": 5, "cached, eager": 2, "naive": 1}


def planned_flops(profile: Profile) -> float:
    """The scoring work of one check, counted on a model of the profile's shape built on the
    meta device (no memory): per mode its full passes and its steps (two width steps in the
    default mode). What the 5-minute budget is held to (tests/engine/test_gpu_check.py)."""
    model, _ = build_llama_in_memory("meta", profile.dtype, profile.shape)
    adapter = adapter_for(model)
    batch, seqlen, layers = profile.rows, profile.seqlen, range(adapter.num_layers)
    width = adapter.mlp_width(0)
    blocks = [Structure(kind, i) for kind in ("attn_block", "mlp_block") for i in layers]
    widths = [Structure("mlp_channels", i, profile.mlp_group, width - profile.mlp_group)
              for i in layers]  # fmt: skip
    total = 0.0
    for mode in MODES:
        steps = [blocks, widths, widths] if mode.name == "cached" else [blocks, widths]
        for candidates in steps:
            for candidate in mode.candidates(candidates):
                start = candidate.sub_block if mode.prefix_cache else 0
                total += candidate_flops(adapter, candidate, start, batch, seqlen)
        total += FULL_PASSES[mode.name] * evaluation_flops(adapter, 0, batch, seqlen)
    return total


def planned_seconds(profile: Profile) -> float:
    return planned_flops(profile) / (PLANNED_MFU * SPEC_PEAK_FLOPS) + PLANNED_COMPILE_SECONDS


def measure_modes(profile: Profile, report: Report, table: Table) -> None:
    """Each mode in turn on one model, its ``Pruning`` freed before the next (so each peak is its
    own); the model is freed on return."""
    model = build_model(profile)
    params = sum(p.numel() for p in model.parameters())
    where = torch.cuda.get_device_name() if profile.device.startswith("cuda") else "the CPU"
    table.add("model on the device", f"all {params / 1e9:.2f}B parameters on {profile.device} "
                                      f"({where})", params=params)  # fmt: skip
    for mode in MODES:
        gc.collect()
        if profile.device.startswith("cuda"):
            torch.cuda.empty_cache()
        reset_peak(profile.device)
        compiles = compiled_graphs()
        synchronize(profile.device)
        started = time.perf_counter()
        pruning = build_pruning(profile, mode, model)
        synchronize(profile.device)
        report.build_seconds[mode.name] = seconds = time.perf_counter() - started
        what = "dense score and prefix cache" if mode.prefix_cache else "dense score"
        if mode.compiled:
            what += f", {compiled_graphs() - compiles} graphs compiled"
        table.add(f"session build, {mode.name}", f"{seconds:.1f} s ({what})", seconds=seconds)
        for name, dimension in (("block", "blocks"), ("MLP-width", "mlp_channels")):
            step = time_step(
                pruning, dimension, f"{name} step, {mode.name}", report.matmul_peak, mode
            )
            report.steps.append(step)
            table.add(step.name, step.describe(), seconds=step.seconds, flops=step.flops,
                      candidates=step.candidates, gap=choice_gap(step))  # fmt: skip
        if mode.name == "cached":
            measure_after_commit(pruning, profile, report, table)
        report.peak_bytes[mode.name] = peak = peak_bytes(profile.device)
        table.add(f"peak memory, {mode.name}", f"{peak / 2**30:.2f} GiB", bytes=peak)
        del pruning


def measure_after_commit(pruning: Pruning, profile: Profile, report: Report, table: Table) -> None:
    """The default mode's cache, a refresh, and one width step after a width commit."""
    scorer = pruning.scorers["blocks"]
    report.compiled_with = str(scorer.runner.backend or "nothing (it fell back to eager)")
    plan = scorer.cache_plan
    report.cache_stride, report.cache_stored = plan.stride, plan.stored
    report.cache_budget_bytes, report.batch_size = plan.budget_bytes, scorer.batch_size
    table.add("compiled with", report.compiled_with)
    table.add("prefix cache", f"budget {plan.budget_bytes / 2**30:.2f} GiB, stride "
                              f"{plan.stride}, {plan.stored} boundaries kept")  # fmt: skip
    table.add("batch size (from the memory budget)", str(scorer.batch_size))
    report.refresh_seconds = time_refresh(pruning, profile.device)
    table.add("cache refresh after a commit at L0.attn", f"{report.refresh_seconds:.2f} s",
              seconds=report.refresh_seconds)  # fmt: skip
    width = next(s for s in report.steps if s.name == "MLP-width step, cached")
    committed = commit_best(pruning, width, "mlp_channels")
    after = time_step(pruning, "mlp_channels", "MLP-width step after a width commit",
                      report.matmul_peak, MODES[0])  # fmt: skip
    pruning.undo()  # the modes after this one score the same model
    report.steps.append(after)
    table.add(after.name, f"{after.describe()}; {after.compiles} graphs compiled "
                          f"(after {committed.id})", seconds=after.seconds,
              compiles=after.compiles)  # fmt: skip


def run(profile: Profile, app: bool, json_path: Path | None = None) -> Report:
    """The whole check; the rows go out as they are measured."""
    table = Table(profile, json_path)
    report = Report(profile.device, f"Llama {profile.shape['num_hidden_layers']} layers")
    table.add("device", f"{profile.device}, {report.model}, {profile.dtype}, {profile.rows} rows "
                        f"x {profile.seqlen} tokens; torch {torch.__version__}")  # fmt: skip
    table.add("time plan", f"{planned_flops(profile) / 1e15:.3g} PFLOP of scoring: about "
                           f"{planned_seconds(profile):.0f} s at {PLANNED_MFU:.0%} of "
                           f"{SPEC_PEAK_FLOPS / 1e12:.0f} TFLOP/s, compiling included")  # fmt: skip
    report.matmul_peak = matmul_peak(profile)
    table.add("matmul peak (measured)", f"{report.matmul_peak / 1e12:.3g} TFLOP/s "
              f"({profile.matmul_n}^3, best of {profile.matmul_reps}); spec "
              f"{SPEC_PEAK_FLOPS / 1e12:.0f}", flops_per_s=report.matmul_peak)  # fmt: skip
    measure_modes(profile, report, table)
    by_name = {step.name: step for step in report.steps}
    for name in ("block", "MLP-width"):
        compiled, eager = by_name[f"{name} step, cached"], by_name[f"{name} step, cached, eager"]
        table.add(f"{name} step, compiled vs eager", agreement(compiled, eager))
    report.projection = project(report, profile)
    for mode in ("cached", "naive"):
        seconds = report.projection[f"{mode} seconds"]
        table.add(f"projected 22% run, {mode}", f"{seconds / 60:.1f} min", seconds=seconds)
    gc.collect()
    if profile.device.startswith("cuda"):
        torch.cuda.empty_cache()  # the 7B model and its cache are gone before the app starts
    report.memory_pane = capture_memory_pane(profile.device) if app else ["skipped (--no-app)"]
    table.add("app memory pane (tmux)", " / ".join(report.memory_pane))
    table.save(complete=True)
    return report


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(prog="python3 -m bench gpu-check", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="the same code, CPU, tiny model")
    parser.add_argument("--no-app", action="store_true", help="skip the app in tmux")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu-check: no CUDA device here; --dry-run runs the same code on the CPU")
    profile = DRY_RUN if args.dry_run else GPU
    started = time.perf_counter()
    report = run(profile, app=not args.no_app, json_path=args.json)
    print(f"gpu-check took {time.perf_counter() - started:.0f} s", flush=True)
    return report
