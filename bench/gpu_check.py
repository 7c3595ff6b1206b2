"""``python -m bench gpu-check``: the one prepared GPU measurement, printed as one table.

Run it first whenever a GPU machine is lent (bench/RESULTS.md). It needs no download: a model
of Llama-2-7B's shape is built in memory in bf16. In order, it measures

1. the dense bf16 matmul peak of this GPU (the MFU denominator, measured, not quoted);
2. one block step and one MLP-width step, scored with the prefix cache and compiled
   sub-blocks (the default), the same eagerly, and naively (the reference's cost), as seconds,
   achieved TFLOP/s (analytic FLOPs of bench/flops.py) and MFU;
3. one commit's cache refresh, peak memory, the cache's budget, stride and batch size;
4. the projected full 22% run at the reference settings (docs/method.md §5: 10 block, 55 MLP
   and 23 head steps on 35 block rows and 17 width rows of 2048 tokens), from the measured
   seconds per candidate row;
5. a short real search of the app in tmux, whose memory pane (NVML) is captured.

``--dry-run`` runs the same code on the CPU with a tiny Llama in well under two minutes, so the
script cannot rot (tests/engine/test_gpu_check.py runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mptui.engine.adapters import adapter_for
from mptui.engine.scoring import Scorer
from mptui.engine.session import PruningSession
from mptui.engine.settings import GroupSizes, PruneSettings

from .app_capture import capture_memory_pane
from .flops import candidate_flops
from .models import LLAMA2_7B, build_llama_in_memory

#: The reference's 22% MultiPruner run on Llama-2-7B (docs/method.md §5 and §2).
REFERENCE_RUN = {
    "block_steps": 10, "mlp_steps": 55, "head_steps": 23,
    "block_rows": 35, "width_rows": 17, "seqlen": 2048,
}  # fmt: skip

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
    compile_backend: str  # what --compile auto uses on a GPU; the dry run skips the C++ compile


GPU = Profile("cuda", "bfloat16", LLAMA2_7B, rows=8, seqlen=2048, mlp_group=1024,
              matmul_n=8192, matmul_reps=50, compile_backend="inductor")  # fmt: skip
DRY_RUN = Profile("cpu", "float32", TINY_LLAMA, rows=4, seqlen=64, mlp_group=16,
                  matmul_n=256, matmul_reps=5, compile_backend="aot_eager")  # fmt: skip

#: (name, prefix cache, compiled): the default run, the same eagerly, and the reference's cost.
MODES = (("cached", True, True), ("cached, eager", True, False), ("naive", False, False))


@dataclass
class StepTiming:
    """One step's candidates scored once: time, analytic FLOPs, and the rate against the peak."""

    name: str
    candidates: int
    seconds: float
    flops: float
    peak: float
    scores: list[float] = field(default_factory=list)  # per candidate, canonical order

    @property
    def tflops(self) -> float:
        return self.flops / self.seconds / 1e12

    @property
    def mfu(self) -> float:
        return self.flops / self.seconds / self.peak


@dataclass
class Report:
    device: str
    model: str
    matmul_peak: float = 0.0
    steps: list[StepTiming] = field(default_factory=list)
    refresh_seconds: float = 0.0
    warm_up_seconds: float = 0.0
    compiled_with: str = ""
    peak_bytes: int = 0
    cache_budget_bytes: int = 0
    cache_stride: int = 0
    cache_stored: int = 0
    batch_size: int = 0
    projection: dict[str, float] = field(default_factory=dict)
    memory_pane: list[str] = field(default_factory=list)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(profile: Profile) -> float:
    """FLOP/s of the best of ``matmul_reps`` square matmuls in the run's dtype."""
    from mptui.engine.loading import resolve_dtype

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


def build_session(
    profile: Profile, prefix_cache: bool, compiled: bool, model=None
) -> PruningSession:
    """A session over random token rows (no calibration file, no channel ranking: timing only)."""
    if model is None:
        model, _tokenizer = build_llama_in_memory(profile.device, profile.dtype, profile.shape)
    adapter = adapter_for(model)
    generator = torch.Generator().manual_seed(0)
    vocab = profile.shape["vocab_size"]
    chunks = torch.randint(0, vocab, (profile.rows, profile.seqlen), generator=generator)
    scorer = Scorer(
        model, adapter, chunks, prefix_cache=prefix_cache,  # batch size: from memory
        compile_backend=profile.compile_backend if compiled else None, on_warning=print,
    )  # fmt: skip
    settings = PruneSettings.with_distribution(0.5, "1:1:0", mlp_group=profile.mlp_group)
    groups = GroupSizes(profile.mlp_group, adapter.attn_group_channels, "gpu-check")
    scorers = dict.fromkeys(("blocks", "mlp_channels", "attn_heads"), scorer)
    return PruningSession(model, adapter, settings, groups, scorers, "llama2-7b-shape")


def warm_up(session: PruningSession, device: str) -> float:
    """Score one candidate of each kind once (compiling happens here); returns the seconds."""
    synchronize(device)
    started = time.perf_counter()
    for dimension in ("blocks", "mlp_channels"):
        session.score_candidate(session.eligible(dimension)[0])
    synchronize(device)
    return time.perf_counter() - started


def time_step(
    session: PruningSession, dimension: str, peak: float, name: str, device: str
) -> StepTiming:
    """Score every candidate of ``dimension`` once; FLOPs count what the scorer really runs."""
    scorer = session.scorers[dimension]
    batch, seqlen = scorer.chunks.shape
    candidates = session.eligible(dimension)
    flops = 0.0
    synchronize(device)
    started = time.perf_counter()
    scores = [session.score_candidate(candidate) for candidate in candidates]
    synchronize(device)
    seconds = time.perf_counter() - started
    for candidate in candidates:
        start = candidate.sub_block if scorer.prefix_cache else 0
        start -= start % scorer.cache_plan.stride
        flops += candidate_flops(session.adapter, candidate, start, batch, seqlen)
    return StepTiming(name, len(candidates), seconds, flops, peak, scores)


def agreement(compiled: StepTiming, eager: StepTiming) -> str:
    """How far the compiled scores are from the eager ones, and whether the choice is the same
    (the lowest score, the first on ties)."""
    worst = max(abs(c / e - 1) for c, e in zip(compiled.scores, eager.scores, strict=True))
    same = compiled.scores.index(min(compiled.scores)) == eager.scores.index(min(eager.scores))
    return f"scores within {worst:.1e} (relative), {'same' if same else 'DIFFERENT'} choice"


def time_refresh(session: PruningSession, device: str) -> float:
    """Seconds for the cache to follow one commit at the first sub-block (the worst case)."""
    candidate = session.eligible("blocks")[0]
    synchronize(device)
    started = time.perf_counter()
    session.commit(candidate, 0.0, "engine")
    synchronize(device)
    seconds = time.perf_counter() - started
    session.undo()
    return seconds


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


def run(profile: Profile, app: bool) -> Report:
    report = Report(profile.device, f"Llama {profile.shape['num_hidden_layers']} layers")
    report.matmul_peak = peak = matmul_peak(profile)
    sessions = {}
    for mode, prefix_cache, compiled in MODES:
        model = next(iter(sessions.values())).model if sessions else None
        sessions[mode] = build_session(profile, prefix_cache, compiled, model)
        seconds = warm_up(sessions[mode], profile.device)
        if compiled:
            report.warm_up_seconds = seconds
    if profile.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for name, dimension in (("block", "blocks"), ("MLP-width", "mlp_channels")):
        for mode, session in sessions.items():
            report.steps.append(
                time_step(session, dimension, peak, f"{name} step, {mode}", profile.device)
            )
    cached = sessions["cached"]
    report.compiled_with = cached.scorers["blocks"].runner.backend or "nothing (it fell back)"
    report.refresh_seconds = time_refresh(cached, profile.device)
    scorer = cached.scorers["blocks"]
    plan = scorer.cache_plan
    report.cache_stride, report.cache_stored = plan.stride, plan.stored
    report.cache_budget_bytes = plan.budget_bytes
    report.batch_size = scorer.batch_size
    if profile.device.startswith("cuda"):
        report.peak_bytes = torch.cuda.max_memory_allocated()
    else:
        import psutil

        report.peak_bytes = psutil.Process().memory_info().rss
    report.projection = project(report, profile)
    del cached, sessions
    if app:
        report.memory_pane = capture_memory_pane(profile.device)
    return report


def table(report: Report, profile: Profile) -> str:
    """The report as one Markdown table, ready for bench/RESULTS.md."""
    gib = 2**30
    rows = [
        ("device", f"{report.device}, {report.model}, {profile.dtype}, "
                   f"{profile.rows} rows x {profile.seqlen} tokens"),
        ("matmul peak (measured)", f"{report.matmul_peak / 1e12:.3g} TFLOP/s "
                                   f"({profile.matmul_n}^3, best of {profile.matmul_reps})"),
    ]  # fmt: skip
    for step in report.steps:
        rows.append(
            (step.name, f"{step.seconds:.2f} s, {step.candidates} candidates, "
                        f"{step.tflops:.3g} TFLOP/s, MFU {step.mfu:.1%}")
        )  # fmt: skip
    by_name = {step.name: step for step in report.steps}
    for name in ("block", "MLP-width"):
        compiled, eager = by_name[f"{name} step, cached"], by_name[f"{name} step, cached, eager"]
        rows.append((f"{name} step, compiled vs eager", agreement(compiled, eager)))
    rows += [
        ("compiled with", f"{report.compiled_with} (first calls {report.warm_up_seconds:.1f} s)"),
        ("cache refresh after a commit at L0.attn", f"{report.refresh_seconds:.2f} s"),
        ("peak memory", f"{report.peak_bytes / gib:.2f} GiB"),
        ("prefix cache", f"budget {report.cache_budget_bytes / gib:.2f} GiB, stride "
                         f"{report.cache_stride}, {report.cache_stored} boundaries kept"),
        ("batch size (from the memory budget)", str(report.batch_size)),
    ]  # fmt: skip
    for mode in ("cached", "naive"):
        seconds = report.projection[f"{mode} seconds"]
        rows.append((f"projected 22% run, {mode}", f"{seconds / 60:.1f} min"))
    pane = " / ".join(report.memory_pane) or "not captured"
    rows.append(("app memory pane (tmux)", pane))
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(prog="python -m bench gpu-check", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="the same code, CPU, tiny model")
    parser.add_argument("--no-app", action="store_true", help="skip the app in tmux")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu-check: no CUDA device here; --dry-run runs the same code on the CPU")
    profile = DRY_RUN if args.dry_run else GPU
    started = time.perf_counter()
    report = run(profile, app=not args.no_app)
    print(table(report, profile))
    print(f"gpu-check took {time.perf_counter() - started:.0f} s")
    if args.json:
        data = asdict(report) | {"profile": asdict(profile)}
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return report
