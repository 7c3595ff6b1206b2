"""``python -m bench serve``: what pruning buys where a pruned model is served, on this machine.

A Llama of half Llama-2-7B's depth and widths (random weights: speed does not depend on their
values) is built in memory, pruned with a plan of the shape a ~22% MultiPruner run makes,
and both the dense and the pruned model are exported as GGUF (``engine/output/gguf_export.py``).
Then
llama.cpp (through llama-cpp-python) and transformers (float32) evaluate the same prompt and
generate greedily, every subject in turn (``engine/output/speed.py``'s ``alternating``), and a table
gives each phase's tokens per second, the speed-up and how close it comes to the parameter
ideal ``1 / (1 - ratio)``.

**Where the plan comes from.** The published Llama-2-7B run (docs/method.md §3) gives the
amount of each dimension but not where the removals went. The placement is taken from a real
run of the engine on the bundled demo model (8 trained layers) at 22% with ``44:52:4``: each of
its steps, in its order, names a demo layer, which stands for the big model's layers in the
same eighth of the depth. Each step is the big model's own size: a whole sub-block, an MLP step
of ``1024 / 11008`` of the width (Llama-2-7B's group), an attention step of one head (128
query channels, Llama-2-7B's group). The amounts follow the engine's budget (§3) on the big
model: a dimension takes the demo's steps in order, again from the first when they run out,
while the ratio is below its cumulative target. So the pattern is a real run's, the ratio the
big model's own, counted like the engine counts it (every parameter, embeddings included).
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mptui.demo

TARGET = 0.22
DISTRIBUTION = "44:52:4"
DIMENSIONS = ("blocks", "mlp_channels", "attn_heads")
KINDS = {
    "blocks": ("attn_block", "mlp_block"),
    "mlp_channels": ("mlp_channels",),
    "attn_heads": ("attn_heads",),
}
DEMO = Path(mptui.demo.__file__).resolve().parent
#: Llama-2-7B's MLP group against its width (docs/method.md §3): the size of an MLP step.
LLAMA2_MLP_STEP = 1024 / 11008


@dataclass(frozen=True)
class Shape:
    """A Llama with multi-head attention (one head per KV group, as Llama-2-7B)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def mlp_group(self) -> int:
        """Llama-2-7B's share of the width per MLP step, in whole blocks of 32 channels (so a
        narrowed width still quantizes to q8_0)."""
        return max(32, round(self.intermediate * LLAMA2_MLP_STEP / 32) * 32)

    def params(self, attn: list[int], mlp: list[int]) -> int:
        """Every parameter (embeddings and LM head included, as the engine's ratio counts them)
        with ``attn[i]`` query channels and ``mlp[i]`` MLP channels kept in layer ``i`` (0: the
        sub-block is removed, its norm with it)."""
        hidden = self.hidden
        total = 2 * self.vocab * hidden + hidden  # embeddings, untied LM head, final norm
        for width in attn:
            total += (hidden + 4 * hidden * width) if width else 0  # MHA: k, v as wide as q
        for width in mlp:
            total += (hidden + 3 * hidden * width) if width else 0
        return total

    def describe(self) -> str:
        return (
            f"{self.layers} layers, hidden {self.hidden}, MLP {self.intermediate}, "
            f"{self.heads} heads of {self.head_dim} (MHA), vocabulary {self.vocab:,}"
        )


#: Llama-2-7B halved in depth, hidden size, MLP width and heads (head size 128 and vocabulary
#: 32,000 kept): 0.94B parameters.
HALF_LLAMA2 = Shape(layers=16, hidden=2048, intermediate=5504, heads=16, vocab=32000)
#: ``--quick``: the same code on a model that builds, exports and runs in a second.
QUICK = Shape(layers=8, hidden=128, intermediate=352, heads=4, vocab=1024)


# --- the plan -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoRun:
    """The engine's own run on the demo model: its steps as ``(kind, layer)`` in order."""

    steps: list[tuple[str, int]]
    layers: int
    ratio: float
    seconds: float
    ids: list[str]


def demo_run(nsamples: int = 16, seqlen: int = 128) -> DemoRun:
    """MultiPruner on the bundled demo model at 22% with ``44:52:4`` (the engine's default
    group sizes; the demo's own calibration text)."""
    from mptui.engine.api import CalibrationSpec, Engine, PruneSettings, RunRequest

    started = time.monotonic()
    calibration = CalibrationSpec(str(DEMO / "calibration.txt"), nsamples, seqlen)
    settings = PruneSettings.with_distribution(TARGET, DISTRIBUTION, calibration=calibration)
    engine = Engine(RunRequest(str(DEMO / "model"), settings))
    outcome = engine.run()
    if outcome.reason != "done":
        raise RuntimeError(f"the demo run ended with {outcome.reason!r}")
    pruning = engine.pruning
    structures = [step.structure for step in pruning.steps]
    return DemoRun(
        steps=[(s.kind, s.layer) for s in structures],
        layers=pruning.model.config.num_hidden_layers,
        ratio=pruning.plan().ratio,
        seconds=time.monotonic() - started,
        ids=[_structure_id(s) for s in structures],
    )


def _structure_id(structure) -> str:
    suffix = {"attn_block": ".attn", "mlp_block": ".mlp"}.get(structure.kind)
    if suffix is None:
        suffix = (".mlp-" if structure.kind == "mlp_channels" else ".heads-") + str(
            structure.remove
        )
    return f"L{structure.layer}{suffix}"


def big_layers(demo_layer: int, demo_layers: int, layers: int) -> list[int]:
    """The big model's layers that ``demo_layer`` stands for: those in the same share of the
    depth (a demo layer covers several when the big model is deeper)."""
    if layers < demo_layers:
        return [demo_layer * layers // demo_layers]
    return [j for j in range(layers) if j * demo_layers // layers == demo_layer]


@dataclass
class DerivedPlan:
    structures: list = field(default_factory=list)
    params: list[int] = field(default_factory=list)  # after each structure
    dense: int = 0
    reached: dict[str, float] = field(default_factory=dict)  # ratio after each dimension
    attn: list[int] = field(default_factory=list)  # query channels kept per layer
    mlp: list[int] = field(default_factory=list)  # MLP channels kept per layer

    @property
    def ratio(self) -> float:
        return 1 - (self.params[-1] if self.params else self.dense) / self.dense


def derive_plan(shape: Shape, demo: DemoRun, target: float = TARGET) -> DerivedPlan:
    """The big model's plan: the demo run's placement, the big model's step sizes, the
    engine's budget (docs/method.md §3: a dimension goes on while ratio < its cumulative
    target, so it stops at the first step that reaches it)."""
    from mptui.engine.search.structures import Structure

    shares = [float(part) for part in DISTRIBUTION.split(":")]
    shares = [share / sum(shares) for share in shares]
    plan = DerivedPlan(attn=[shape.hidden] * shape.layers, mlp=[shape.intermediate] * shape.layers)
    plan.dense = shape.params(plan.attn, plan.mlp)

    def ratio() -> float:
        return 1 - shape.params(plan.attn, plan.mlp) / plan.dense

    def step(kind: str, layer: int):
        """The structure removing ``kind`` from ``layer`` now, or None if not a candidate."""
        attn, mlp = plan.attn[layer], plan.mlp[layer]
        if kind == "attn_block":
            return Structure(kind, layer) if attn else None
        if kind == "mlp_block":
            return Structure(kind, layer) if mlp else None
        if kind == "mlp_channels":
            group = shape.mlp_group
            return Structure(kind, layer, group, mlp - group) if mlp - group > 0 else None
        group = shape.head_dim  # one KV group: one head under MHA
        return Structure(kind, layer, group, attn - group) if attn - group > 0 else None

    cumulative = 0.0
    for dimension, share in zip(DIMENSIONS, shares, strict=True):
        cumulative += share
        goal = target * min(1.0, cumulative)
        sequence = [
            (kind, layer)
            for kind, demo_layer in demo.steps
            if kind in KINDS[dimension]
            for layer in big_layers(demo_layer, demo.layers, shape.layers)
        ]
        index = idle = 0
        while share and sequence and idle < len(sequence) and ratio() < goal:
            structure = step(*sequence[index % len(sequence)])
            index += 1
            if structure is None:
                idle += 1  # a whole pass with no candidate: the dimension has run out
                continue
            idle = 0
            if structure.kind == "attn_block":
                plan.attn[structure.layer] = 0
            elif structure.kind == "mlp_block":
                plan.mlp[structure.layer] = 0
            elif structure.kind == "mlp_channels":
                plan.mlp[structure.layer] = structure.width_after
            else:
                plan.attn[structure.layer] = structure.width_after
            plan.structures.append(structure)
            plan.params.append(shape.params(plan.attn, plan.mlp))
        plan.reached[dimension] = ratio()
    return plan


def as_plan(shape: Shape, derived: DerivedPlan | None, name: str):
    """An mptui plan (what ``apply_plan`` and the GGUF export read); None: the dense model."""
    from mptui.engine.search.plan import Plan, PlanModel, PlanStep

    dense = shape.params([shape.hidden] * shape.layers, [shape.intermediate] * shape.layers)
    model = PlanModel(name, dense, shape.layers, shape.intermediate, shape.hidden,
                      architecture="LlamaForCausalLM", dtype="float32")  # fmt: skip
    steps = []
    if derived is not None:
        for index, (structure, params) in enumerate(
            zip(derived.structures, derived.params, strict=True), start=1
        ):
            ratio = 1 - params / derived.dense
            steps.append(PlanStep(index, structure, 0.0, params, ratio, "user"))
    return Plan(model, {"target_ratio": TARGET, "distribution": DISTRIBUTION}, 0.0, steps)


# --- the models ---------------------------------------------------------------------------------
def build_models(shape: Shape, derived: DerivedPlan, seed: int = 0):
    """``(dense, pruned)`` float32 models of ``shape`` (random weights) and the pruned one's plan
    applied through the engine's own ``apply_plan``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from mptui.engine.model.rebuild import apply_plan

    config = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads, max_position_embeddings=1024, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    dense = AutoModelForCausalLM.from_config(
        config, dtype=torch.float32, attn_implementation="sdpa"
    )
    dense.eval().requires_grad_(False)
    pruned = copy.deepcopy(dense)
    apply_plan(pruned, as_plan(shape, derived, "serve-pruned"))
    return dense, pruned


def prompt_ids(tokenizer, length: int) -> list[int]:
    """``length`` token ids of ordinary text (Python's own help topics)."""
    from bench.tiny import tiny_text

    ids: list[int] = []
    for document in tiny_text(400):
        ids += tokenizer(document)["input_ids"]
        if len(ids) >= length:
            return ids[:length]
    raise ValueError(f"the text has fewer than {length} tokens")


# --- the measurements ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    backend: str
    type: str
    threads: int
    phase: str  # "prompt" or "generation"
    dense: float  # tokens per second
    pruned: float
    ideal: float

    @property
    def speedup(self) -> float:
        return self.pruned / self.dense

    @property
    def of_ideal(self) -> float:
        return self.speedup / self.ideal


@dataclass
class ServeResult:
    shape: Shape
    derived: DerivedPlan
    demo: DemoRun
    params_dense: int
    params_pruned: int
    exports: dict = field(default_factory=dict)  # (variant, type) -> GgufResult
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ratio(self) -> float:
        return 1 - self.params_pruned / self.params_dense


def table(rows: list[Row]) -> str:
    lines = [
        "| backend | type | threads | phase | dense tok/s | pruned tok/s | speed-up | "
        "ideal 1/(1-ratio) | speed-up / ideal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.backend} | {row.type} | {row.threads} | {row.phase} | {row.dense:,.2f} | "
            f"{row.pruned:,.2f} | {row.speedup:.3f}x | {row.ideal:.3f}x | {row.of_ideal:.1%} |"
        )
    return "\n".join(lines)


def layer_pattern(derived: DerivedPlan, shape: Shape) -> str:
    """One line per layer: attention heads kept, MLP width kept."""
    lines = []
    for layer, (attn, mlp) in enumerate(zip(derived.attn, derived.mlp, strict=True)):
        heads = f"{attn // shape.head_dim:>2}/{shape.heads} heads" if attn else "attention removed"
        width = f"MLP {mlp:>5}/{shape.intermediate}" if mlp else "MLP removed"
        lines.append(f"  layer {layer:>2}: {heads:<17}  {width}")
    return "\n".join(lines)


def measure(
    shape: Shape,
    *,
    types: tuple[str, ...] = ("f16", "q8_0"),
    threads: tuple[int, ...] = (1,),
    repeats: int = 5,
    prompt_tokens: int = 128,
    new_tokens: int = 32,
    demo_samples: tuple[int, int] = (16, 128),
    transformers: bool = True,
    log: Callable[[str], None] = print,
) -> ServeResult:
    """Derive the plan, build, prune, export and time; the rows in the table's order."""
    import torch

    from bench.tiny import tiny_tokenizer
    from mptui.engine.output.gguf_export import export_gguf
    from mptui.engine.output.speed import alternating, llama_cpp_speed, transformers_speed

    started = time.monotonic()
    torch.set_num_threads(1)
    log("load average at the start: " + " ".join(f"{load:.2f}" for load in os.getloadavg()))
    demo = demo_run(*demo_samples)
    log(
        f"demo run (mptui/demo/model, {demo.layers} layers, {TARGET:.0%} {DISTRIBUTION}, "
        f"{demo_samples[0]}x{demo_samples[1]} calibration tokens): ratio {demo.ratio:.2%} in "
        f"{demo.seconds:.0f} s; steps: {' '.join(demo.ids)}"
    )
    derived = derive_plan(shape, demo)
    dims = ", ".join(f"{dim} {derived.reached[dim]:.3%}" for dim in DIMENSIONS)
    counts = {dim: sum(s.dimension == dim for s in derived.structures) for dim in DIMENSIONS}
    log(
        f"model: {shape.describe()}; plan: {counts['blocks']} blocks, "
        f"{counts['mlp_channels']} MLP steps of {shape.mlp_group}, {counts['attn_heads']} head "
        f"steps of {shape.head_dim}; ratio after {dims}"
    )
    log(layer_pattern(derived, shape))
    dense, pruned = build_models(shape, derived)
    result = ServeResult(shape, derived, demo, dense.num_parameters(), pruned.num_parameters())
    log(
        f"params: dense {result.params_dense:,}, pruned {result.params_pruned:,}: "
        f"ratio {result.ratio:.3%} (plan {derived.ratio:.3%})"
    )
    tokenizer = tiny_tokenizer(512)
    ids = prompt_ids(tokenizer, prompt_tokens)
    ideal = 1 / (1 - result.ratio)
    measures: dict[tuple, Callable] = {}
    with tempfile.TemporaryDirectory(prefix="mptui-serve-") as folder:
        for gguf_type in types:
            for variant, model, derived_or_none in (
                ("dense", dense, None), ("pruned", pruned, derived),
            ):  # fmt: skip
                out = Path(folder) / f"{variant}-{gguf_type}.gguf"
                plan = as_plan(shape, derived_or_none, f"serve-{variant}")
                exported = export_gguf(model, tokenizer, plan, out, gguf_type=gguf_type)
                result.exports[variant, gguf_type] = exported
                log(
                    f"exported {out.name}: {exported.params:,} params, "
                    f"{exported.bytes / 2**20:,.0f} MiB in {exported.seconds:.1f} s"
                )
                for count in threads:
                    measures["llama.cpp", gguf_type, count, variant] = functools.partial(
                        llama_cpp_speed, out, ids, new_tokens, repeats=1, threads=count
                    )
        if transformers:
            for variant, model in (("dense", dense), ("pruned", pruned)):
                transformers_speed(model, ids[:8], 2, repeats=1)  # first-call costs, untimed
                measures["transformers", "f32", 1, variant] = functools.partial(
                    transformers_speed, model, ids, new_tokens, repeats=1
                )
        log(
            f"timing {len(measures)} subjects x {repeats} rounds, alternating: prompt "
            f"{len(ids)} tokens, {new_tokens} new tokens"
        )
        speeds = alternating(measures, repeats)
    log("load average at the end: " + " ".join(f"{load:.2f}" for load in os.getloadavg()))
    for backend, gguf_type, count, variant in measures:
        if variant != "dense":
            continue
        dense_speed = speeds[backend, gguf_type, count, "dense"]
        pruned_speed = speeds[backend, gguf_type, count, "pruned"]
        for phase, attribute in (("prompt", "prompt_tps"), ("generation", "generate_tps")):
            pair = getattr(dense_speed, attribute), getattr(pruned_speed, attribute)
            result.rows.append(Row(backend, gguf_type, count, phase, *pair, ideal))
    result.seconds = time.monotonic() - started
    return result


def main(argv: list[str]) -> ServeResult:
    description = "speed-up of a ~22%-pruned 0.94B Llama in llama.cpp and transformers"
    parser = argparse.ArgumentParser(prog="python -m bench serve", description=description)
    parser.add_argument("--layers", type=int, default=None, help="decoder layers (default 16)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per subject (default 5)")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="default 128")
    parser.add_argument("--new-tokens", type=int, default=32, help="default 32")
    parser.add_argument("--types", default="f16,q8_0", help="GGUF types (default f16,q8_0)")
    parser.add_argument(
        "--threads", default="1", help="llama.cpp threads, e.g. 1,2 (default 1: see RESULTS.md)"
    )
    parser.add_argument(
        "--no-transformers", action="store_true", help="time llama.cpp only (default: both)"
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="a tiny model (8 layers, hidden 128) and a short demo run: the test's config",
    )  # fmt: skip
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else HALF_LLAMA2
    if args.layers:
        shape = Shape(args.layers, shape.hidden, shape.intermediate, shape.heads, shape.vocab)
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: run with OMP_NUM_THREADS=1 (transformers is timed on one thread)")
    result = measure(
        shape,
        types=tuple(args.types.split(",")),
        threads=tuple(int(count) for count in args.threads.split(",")),
        repeats=args.repeats,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        demo_samples=(4, 64) if args.quick else (16, 128),
        transformers=not args.no_transformers,
        log=lambda text: print(text, flush=True),
    )
    print()
    print(table(result.rows))
    print(
        f"\nratio {result.ratio:.3%}, ideal {1 / (1 - result.ratio):.3f}x; "
        f"{result.seconds:.0f} s in all",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
